"""Aligned memory for direct I/O.

``O_DIRECT`` needs the user buffer aligned to the device's logical block size
(512 or 4096 bytes, see open(2), "O_DIRECT").  An anonymous mmap is always
page aligned (4096 on x86-64 and arm64), which covers both.  ``MAP_SHARED``
keeps the pages shared, not copy-on-write, if the process forks while a
direct read or write is in flight.
"""

from __future__ import annotations

import ctypes
import mmap


def aligned_buffer(size: int) -> mmap.mmap:
    """Return a zero-filled, page-aligned buffer of ``size`` bytes.

    ``size`` must be positive.  Close it (or let it be collected) when done.
    """
    if size <= 0:
        raise ValueError(f"buffer size must be positive: {size}")
    return mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


class _PyBuffer(ctypes.Structure):
    # Py_buffer from CPython's Include/pybuffer.h; only ``buf`` is read, the
    # other fields give PyObject_GetBuffer room to fill in.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0  # contiguous bytes, read-only allowed


def address(buf: memoryview) -> int | None:
    """The memory address of ``buf``'s first byte, or None if unknown.

    Works for read-only buffers (``bytes``) too; None for non-contiguous
    views, which no I/O path here accepts anyway.
    """
    view = _PyBuffer()
    try:
        _get_buffer(buf, ctypes.byref(view), _PYBUF_SIMPLE)
    except BufferError:
        return None
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


def is_aligned(buf: memoryview, align: int) -> bool:
    """True if ``buf`` starts at a memory address that is a multiple of ``align``.

    An empty buffer counts as aligned: no byte of it is transferred.
    """
    if align <= 1 or len(buf) == 0:
        return True
    addr = address(buf)
    return addr is not None and addr % align == 0
