"""What may stop an OVF store update: :data:`Check`, the caller's say
before the writes a reader could see (for the daemon, whether the pool
map still allows OVF writes to the domain), and :func:`stopping`, which
lets the copies into the other stores tell a stop (:class:`Stopped`) from
their own errors.  The update is :class:`volume.ovfupdate.Update`.
"""

from __future__ import annotations

from collections.abc import Callable

#: What may stop an update (see :meth:`~volume.ovfupdate.Update.seal`): it raises an Error
#: once the update must not write any more.
Check = Callable[[], None]


def go_on() -> None:
    """The default :data:`Check`: nothing stops the update."""


class Stopped(Exception):
    """A copy's :data:`Check` raised ``error``: no more copies."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def stopping(check: Check) -> Check:
    """``check``, raising :class:`Stopped` (told apart from the copy's own errors)."""
    def wrapped() -> None:
        try:
            check()
        except Exception as e:
            raise Stopped(e) from e
    return wrapped
