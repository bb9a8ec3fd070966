"""Track zstd frame boundaries in a byte stream (RFC 8878 §3.1), sans-IO.

python-zstandard's bounded-output stream writer does not tell whether the
input ended inside a frame, and its ``decompressobj`` (which does) returns
all output at once, which a compression bomb turns into gigabytes.  So the
upload path decodes with the bounded writer and feeds the same bytes to this
tracker, which only reads frame and block headers and skips block contents
arithmetically: a few operations per 128 KiB block.
"""

from __future__ import annotations

from .errors import WireError

_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE = 0x184D2A50
_DICT_ID_SIZE = (0, 1, 2, 4)
_FCS_SIZE = (0, 2, 4, 8)


class BadZstd(WireError):
    code = "invalid-zstd"


class FrameTracker:
    def __init__(self) -> None:
        self._hdr = bytearray()
        self._need = 4  # header bytes wanted next
        self._state = "magic"
        self._skip = 0  # content bytes to pass over
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        """True at the end of a frame, after at least one frame."""
        return self.frames > 0 and self._state == "magic" and not self._hdr and not self._skip

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._skip:
                n = min(self._skip, len(view) - pos)
                self._skip -= n
                pos += n
                if not self._skip:
                    self._after_skip()
                continue
            n = min(self._need - len(self._hdr), len(view) - pos)
            self._hdr += view[pos : pos + n]
            pos += n
            if len(self._hdr) == self._need:
                hdr = bytes(self._hdr)
                self._hdr.clear()
                self._header(hdr)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _header(self, hdr: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(hdr, "little")
            if magic == _MAGIC:
                self._expect("descriptor", 1)
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE:
                self._expect("skippable", 4)
            else:
                raise BadZstd("body is not a zstd stream (bad frame magic)")
        elif self._state == "skippable":
            self._skip = int.from_bytes(hdr, "little")
            self._state = "skip-frame"
            if not self._skip:
                self._after_skip()
        elif self._state == "descriptor":
            fhd = hdr[0]
            if fhd & 0x08:
                raise BadZstd("zstd frame header has its reserved bit set")
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = _FCS_SIZE[fhd >> 6] or (1 if single else 0)
            rest = (0 if single else 1) + _DICT_ID_SIZE[fhd & 0x03] + fcs
            if rest:
                self._expect("frame-rest", rest)
            else:
                self._expect("block", 3)
        elif self._state == "frame-rest":
            self._expect("block", 3)
        elif self._state == "block":
            bh = int.from_bytes(hdr, "little")
            last, btype, size = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise BadZstd("zstd block of reserved type")
            self._skip = 1 if btype == 1 else size
            self._state = "last-block" if last else "block"
            self._need = 3
            if not self._skip:
                self._after_skip()
        elif self._state == "checksum":
            self._end_frame()

    def _after_skip(self) -> None:
        if self._state == "skip-frame":
            self._expect("magic", 4)
        elif self._state == "block":
            self._need = 3
        elif self._state == "last-block":
            if self._checksum:
                self._expect("checksum", 4)
            else:
                self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self._expect("magic", 4)
