"""A streaming validator of flat tars of regular files (sans-IO).

:class:`TarStream` takes chunks of any size and checks the tar itself:
header checksums and magic, PAX (``x``) and GNU long-name (``L``) headers
of bounded size, regular files only, flat unique names, zero padding, the
two end-of-archive blocks, and nothing but zeros after them.  What a member
may be called and hold is left to a subclass (``tarread.OvfTarReader``),
through :meth:`TarStream._admit` and :meth:`TarStream._entry_done`.

Only header blocks and the bodies a subclass asks to keep are buffered;
member data is hashed with xxh3-128 over memoryview slices of the caller's
chunks, never copied, so memory stays constant whatever the stream size.
"""

from __future__ import annotations

from typing import NoReturn

import xxhash

from .errors import BadTar
from .tarbody import Body, Entry, is_zero
from .tarheader import (
    BLOCK,
    EOF_SIZE,
    GNU_LONGNAME,
    KINDS,
    PAX,
    REGULAR,
    ZERO_BLOCK,
    RawHeader,
    entry_name,
    name_problem,
    padding,
    parse_header,
    parse_longname,
    parse_pax,
    shown_name,
)

# States of the stream.
_HEADER, _DATA, _PADDING, _EOF2, _DONE = "header", "data", "padding", "eof2", "done"


class TarStream:
    """Check a tar fed in chunks; see the module docstring.

    ``max_total``: the stream may not be longer, and a body that cannot fit
    (with its padding and the end blocks) is refused at its header.
    ``max_entries``: members at most.  ``max_pax``: bytes of a PAX or GNU
    long-name body.  ``ignore_trailing``: bytes after the end blocks are
    not looked at; otherwise they must be zeros.  ``committed``: a stored
    archive, read with the header rules it was committed under (see
    :func:`parse_pax`), not those of an upload.
    """

    def __init__(
        self, *, max_total: int, max_entries: int, max_pax: int, ignore_trailing: bool,
        committed: bool = False,
    ) -> None:
        self._strict = not committed
        self._max_total = max_total
        self._max_entries = max_entries
        self._max_pax = max_pax
        self._ignore_trailing = ignore_trailing
        self._state = _HEADER
        self._offset = 0  # bytes consumed
        self._block = bytearray()  # a header block being collected
        self._left = 0  # bytes left in the current data or padding
        self._body: Body | None = None
        self._last = ""  # what the last body was, for messages
        self._pax: dict[str, bytes] | None = None
        self._longname: bytes | None = None
        self._tar_hash = xxhash.xxh3_128()
        self._tar_length = 0
        self._error: BadTar | None = None
        self.entries: list[Entry] = []
        self.names: set[str] = set()

    @property
    def offset(self) -> int:
        """Bytes fed so far."""
        return self._offset

    @property
    def complete(self) -> bool:
        """True once both end-of-archive blocks were read."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next chunk.  Raises BadTar at the first violation,
        naming the entry, and the same error on every later call."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        start = self._offset
        if not self._ignore_trailing and start + len(view) > self._max_total:
            self._fail(f"the stream is longer than the store ({self._max_total} bytes)")
        pos = 0
        while pos < len(view):
            if self._state == _HEADER and not self._block:
                pos = self._whole_entries(view, pos)
                if pos == len(view):
                    break
            pos += self._STEP[self._state](self, view[pos:])
        if self._state == _DONE:  # only the tar is hashed, not what follows it
            self._tar_hash.update(view[: max(self._tar_length - start, 0)])
        else:
            self._tar_hash.update(view)

    def check_complete(self) -> tuple[int, str]:
        """(tar length, its xxh3-128) of a complete tar; BadTar if it was cut."""
        if self._error is not None:
            raise self._error
        if self._state != _DONE:
            self._fail(self._truncation())
        return self._tar_length, self._tar_hash.hexdigest()

    # For subclasses.

    def _admit(self, name: str, size: int) -> bool:
        """Accept a member with a flat, new name; return whether to keep its
        data for :meth:`_entry_done`.  Raise ValueError to refuse it."""
        return False

    def _entry_done(self, entry: Entry, data: bytes) -> None:
        """A member was read whole (``data`` is empty unless kept).  Raise
        ValueError to refuse it."""

    def _fail(self, detail: str) -> NoReturn:
        self._error = BadTar(detail)
        raise self._error

    # The stream: each step consumes a prefix of ``view`` and says how much.

    def _header_step(self, view: memoryview) -> int:
        if not self._block and len(view) >= BLOCK:  # the common case: no copy to join
            self._offset += BLOCK
            self._on_block(bytes(view[:BLOCK]), self._offset - BLOCK)
            return BLOCK
        k = min(BLOCK - len(self._block), len(view))
        self._block += view[:k]
        self._offset += k
        if len(self._block) == BLOCK:
            block = bytes(self._block)
            self._block.clear()
            self._on_block(block, self._offset - BLOCK)
        return k

    def _data_step(self, view: memoryview) -> int:
        body = self._body
        assert body is not None
        chunk = view[: self._left]
        if body.hash is not None:
            body.hash.update(chunk)
        if body.buf is not None:
            body.buf += chunk
        self._left -= len(chunk)
        self._offset += len(chunk)
        if not self._left:
            self._end_body()
        return len(chunk)

    def _padding_step(self, view: memoryview) -> int:
        chunk = view[: self._left]
        if not is_zero(chunk):
            at = self._offset + next(i for i, b in enumerate(chunk) if b)
            self._fail(f"non-zero padding after {self._last} at offset {at}")
        self._left -= len(chunk)
        self._offset += len(chunk)
        if not self._left:
            self._state = _HEADER
        return len(chunk)

    def _trailing_step(self, view: memoryview) -> int:
        if not self._ignore_trailing and not is_zero(view):
            self._fail(f"non-zero data after the end of the archive (offset {self._tar_length})")
        self._offset += len(view)
        return len(view)

    _STEP = {
        _HEADER: _header_step, _EOF2: _header_step, _DATA: _data_step,
        _PADDING: _padding_step, _DONE: _trailing_step,
    }

    def _on_block(self, block: bytes, offset: int) -> None:
        if self._state == _EOF2:
            if block != ZERO_BLOCK:
                self._fail(f"a lone zero block at offset {offset - BLOCK}, then data")
            self._state = _DONE
            self._tar_length = offset + BLOCK
            return
        if block == ZERO_BLOCK:
            if self._pax is not None or self._longname is not None:
                self._fail(f"an extended header is not followed by an entry (offset {offset})")
            self._state = _EOF2
            return
        try:
            raw = parse_header(block, self._strict)
        except ValueError as e:
            self._fail(f"header at offset {offset}: {e}")
        if raw.type in REGULAR:
            self._start_entry(raw, offset)
        elif raw.type in (PAX, GNU_LONGNAME):
            self._start_extension(raw, offset)
        else:
            kind = KINDS.get(raw.type, f"type {raw.type!r}")
            name = shown_name(raw, self._pax, self._longname)
            self._fail(f"entry {name!r} at offset {offset}: "
                       f"{kind} entries are not allowed, only regular files")

    def _start_extension(self, raw: RawHeader, offset: int) -> None:
        what = "PAX header" if raw.type == PAX else "GNU long name"
        if (self._pax if raw.type == PAX else self._longname) is not None:
            self._fail(f"two {what}s for one entry at offset {offset}")
        if raw.size > self._max_pax:
            self._fail(f"{what} of {raw.size} bytes at offset {offset} exceeds the "
                       f"limit of {self._max_pax}")
        self._check_fits(offset, raw.size, f"{what} at offset {offset}")
        self._enter(Body(raw.type, f"the {what} at offset {offset}", self._offset,
                          raw.size, keep=True))

    def _start_entry(self, raw: RawHeader, offset: int) -> None:
        if len(self.names) >= self._max_entries:
            self._fail(f"more than {self._max_entries} entries (at offset {offset})")
        try:
            name_bytes, size = entry_name(raw, self._pax, self._longname)
        except ValueError as e:
            self._fail(f"entry at offset {offset}: {e}")
        self._pax = self._longname = None
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"entry {name_bytes!r} at offset {offset}: name is not UTF-8")
        problem = name_problem(name) or ("duplicate name" if name in self.names else None)
        if problem is not None:
            self._fail(f"entry {name!r} at offset {offset}: {problem}")
        try:
            keep = self._admit(name, size)
        except ValueError as e:
            self._fail(f"entry {name!r} at offset {offset}: {e}")
        if offset + BLOCK + size + padding(size) + EOF_SIZE > self._max_total:
            self._check_fits(offset, size, f"entry {name!r} at offset {offset}")
        self.names.add(name)
        self._enter(Body(REGULAR[0], name, self._offset, size, keep))

    def _whole_entries(self, view: memoryview, pos: int) -> int:
        """Where a subclass may read whole entries of ``view`` from ``pos`` in
        one go (see tarread); returns where the steps take over."""
        return pos

    def _check_fits(self, offset: int, size: int, where: str) -> None:
        """Refuse at its header a body that cannot fit with the end blocks."""
        if offset + BLOCK + size + padding(size) + EOF_SIZE > self._max_total:
            self._fail(f"{where}: {size} bytes do not fit in the store "
                       f"({self._max_total} bytes)")

    def _enter(self, body: Body) -> None:
        self._body = body
        self._left = body.size
        self._state = _DATA
        if not body.size:
            self._end_body()

    def _end_body(self) -> None:
        body = self._body
        assert body is not None
        self._body, self._last = None, body.label
        pad = padding(body.size)
        self._state, self._left = (_PADDING, pad) if pad else (_HEADER, 0)
        data = bytes(body.buf) if body.buf is not None else b""
        try:
            if body.kind == PAX:
                self._pax = parse_pax(data, self._strict)
            elif body.kind == GNU_LONGNAME:
                self._longname = parse_longname(data)
            else:
                assert body.hash is not None
                entry = Entry(body.name, body.offset, body.size, body.hash.hexdigest())
                self.entries.append(entry)
                self._entry_done(entry, data)
        except ValueError as e:
            self._fail(f"{body.label} (data at offset {body.offset}): {e}")

    def _truncation(self) -> str:
        at = f"the stream ended at offset {self._offset}"
        if self._state == _DATA:
            assert self._body is not None
            got = self._body.size - self._left
            return f"{at}, inside {self._body.label} ({got} of {self._body.size} bytes)"
        if self._state == _PADDING:
            return f"{at}, inside the padding after {self._last}"
        if self._block:
            return f"{at}, inside a header ({len(self._block)} of {BLOCK} bytes)"
        if self._state == _EOF2:
            return f"{at}, after one of the two end-of-archive blocks"
        return f"{at}, without the end-of-archive blocks"
