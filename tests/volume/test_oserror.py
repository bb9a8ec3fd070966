"""The one mapping from OSError to our errors."""

from __future__ import annotations

import errno
import os

import pytest

from volume._oserror import oserrors
from volume.errors import (
    Conflict,
    Error,
    Forbidden,
    InvalidRequest,
    NoSpace,
    NotFound,
    VolumeError,
)

SECRET = "/rhev/data-center/secret/path"


@pytest.mark.parametrize(("code", "cls"), [
    (errno.ENOSPC, NoSpace),
    (errno.EDQUOT, NoSpace),
    (errno.ENOENT, NotFound),
    (errno.EACCES, Forbidden),
    (errno.EPERM, Forbidden),
    (errno.EROFS, Forbidden),
    (errno.EEXIST, Conflict),
    (errno.EISDIR, InvalidRequest),
    (errno.EFBIG, InvalidRequest),
    (errno.EIO, VolumeError),
    (errno.EINVAL, VolumeError),
], ids=lambda v: errno.errorcode[v] if isinstance(v, int) else v.__name__)
def test_errno_maps_to_error_without_path(code: int, cls: type[Error]) -> None:
    with pytest.raises(cls) as info, oserrors("write"):
        raise OSError(code, os.strerror(code), SECRET)
    assert type(info.value) is cls
    assert SECRET not in str(info.value)
    assert isinstance(info.value.__cause__, OSError), "the original stays chained for logs"


def test_no_space_message() -> None:
    with pytest.raises(NoSpace, match=r"^no space left on the storage$"), oserrors("zero"):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), oserrors("read"):
        raise KeyError("not an OSError")
