"""A .params file (mx.nd.save's format, byte for byte) written past the page cache.

Every epoch's checkpoint writes the whole network: 45 MB for ResNet-18, 100 MB
for ResNet-50. Through the page cache (mx.nd.save) each of its pages is a newly
allocated page-cache page, and on this machine's VM (free page reporting: pages
a guest frees go back to the host) that cost 0.13-0.27 s of CPU for a ResNet-18
checkpoint, up to 23 us a page (perf: the kernel's copy_folio_from_iter_atomic),
and 0.05 s only once the pages of a removed checkpoint were reused. The
background commit takes that CPU from the epoch training beside it. Written
with O_DIRECT from one reused, page-aligned buffer, the whole commit costs
0.04 s of CPU here, every epoch (0.025 s of it the SHA-256, computed from the
buffer instead of by reading the file back). A file system that refuses
O_DIRECT gets the same bytes through an ordinary write.

The format, from MXNet 1.9.1's src/ndarray/ndarray.cc (NDArray::Save): a list
header (uint64 0x112, uint64 0), the arrays (uint64 count; each: uint32 magic
0xF993fac9, int32 storage type 0, int32 ndim, int64 dims, int32 device type and
id of cpu(0), int32 dtype flag, the values), then the names (uint64 count;
each: uint64 length, UTF-8 bytes). tests/test_paramfile.py compares the bytes
with mx.nd.save's. Arrays it does not cover (sparse, empty, MXNet's numpy shape
semantics on) are saved by mx.nd.save.
"""
import errno
import hashlib
import mmap
import os
import struct
import threading

LIST_MAGIC = 0x112
ARRAY_MAGIC = 0xF993FAC9  # NDARRAY_V2_MAGIC
CPU_DEVICE = (1, 0)  # Context::kCPU, device 0: what as_in_context(mx.cpu()) saves
STAGING_BYTES = 8 << 20  # the aligned buffer that O_DIRECT writes go through
_BLOCK = 4096  # O_DIRECT's alignment of offsets, lengths and memory (a page covers every device)
_staging = threading.local()  # one buffer per writing thread, kept: reusing its pages is the point


def save(path, arrays):
    """Write `arrays` ({name: NDArray on the CPU}) to `path` as mx.nd.save(path, arrays) does;
    returns the file's hex SHA-256, computed from the bytes as they are written (None when
    mx.nd.save wrote them)."""
    import mxnet as mx
    if not _covered(arrays):
        mx.nd.save(path, arrays)
        return None
    try:
        return _write(path, arrays, direct=True)
    except _Refused:
        return _write(path, arrays, direct=False)


class _Refused(Exception):
    """The file system refused O_DIRECT (EINVAL)."""


def _covered(arrays):
    import mxnet as mx
    from mxnet.ndarray.ndarray import _DTYPE_NP_TO_MX
    return not mx.util.is_np_shape() and all(
        a.stype == "default" and a.size > 0 and a.dtype in _DTYPE_NP_TO_MX for a in arrays.values())


def _pieces(arrays):
    """The file's contents in order: bytes (headers, names) and NDArrays (their values)."""
    from mxnet.ndarray.ndarray import _DTYPE_NP_TO_MX
    yield struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))
    for array in arrays.values():
        yield (struct.pack(f"<IiI{array.ndim}q", ARRAY_MAGIC, 0, array.ndim, *array.shape)
               + struct.pack("<iii", *CPU_DEVICE, _DTYPE_NP_TO_MX[array.dtype]))
        yield array
    yield struct.pack("<Q", len(arrays))
    for name in arrays:
        encoded = name.encode("utf-8")
        yield struct.pack("<Q", len(encoded)) + encoded


def _write(path, arrays, direct):
    """Write the file through the staging buffer: whole blocks at a time, the last padded and
    cut back (ftruncate). Returns its hex SHA-256; raises _Refused if O_DIRECT is refused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise _Refused() if direct and exc.errno == errno.EINVAL else exc
    try:
        largest = max(map(_nbytes, arrays.values()), default=0)
        out = _Staged(fd, _buffer(largest + 2 * _BLOCK))
        for piece in _pieces(arrays):
            out.put(piece)
        size = out.close()
        os.ftruncate(fd, size)
    except OSError as exc:
        if direct and exc.errno == errno.EINVAL:
            raise _Refused() from None
        raise OSError(exc.errno, exc.strerror, path) from None  # os.write's names no file
    finally:
        os.close(fd)
    return out.digest.hexdigest()


class _Staged:
    """Bytes and NDArrays copied into an aligned buffer, written out in whole blocks."""

    def __init__(self, fd, buffer):
        self.fd, self.buffer, self.filled, self.size = fd, buffer, 0, 0
        self.digest = hashlib.sha256()

    def put(self, piece):
        """Append bytes, or an NDArray's values (copied straight into the buffer)."""
        length = _nbytes(piece)
        if self.filled + length > len(self.buffer):
            self._flush(self.filled // _BLOCK * _BLOCK)
        if isinstance(piece, bytes):
            self.buffer[self.filled:self.filled + length] = piece
        else:
            _copy_values(piece, self.buffer, self.filled)
        self.filled += length

    def close(self):
        """Write what is left, padded to a whole block; returns the bytes that are data."""
        data = self.filled
        padded = -(-data // _BLOCK) * _BLOCK
        self.buffer[data:padded] = bytes(padded - data)
        self._flush(padded, data)
        return self.size

    def _flush(self, length, data=None):
        """Write buffer[:length] (of which `data` bytes are data, default all), keep the rest."""
        data = length if data is None else data
        with memoryview(self.buffer) as view:
            self.digest.update(view[:data])
            done = 0
            while done < length:
                done += os.write(self.fd, view[done:length])
        self.size += data
        rest = max(self.filled - length, 0)
        self.buffer[:rest] = self.buffer[length:length + rest]
        self.filled = rest


def _nbytes(piece):
    import numpy as np
    return len(piece) if isinstance(piece, bytes) else piece.size * np.dtype(piece.dtype).itemsize


def _copy_values(array, buffer, offset):
    """MXNDArraySyncCopyToCPU into buffer[offset:]: what asnumpy does, without a new array
    (waits for the array; MKL-DNN layouts come out in the default one)."""
    import ctypes
    from mxnet.base import _LIB, check_call
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer, offset))
    check_call(_LIB.MXNDArraySyncCopyToCPU(array.handle, ctypes.c_void_p(address), ctypes.c_size_t(array.size)))


def _buffer(at_least):
    """This thread's staging buffer, of at least `at_least` bytes (and STAGING_BYTES)."""
    size = -(-max(at_least, STAGING_BYTES) // mmap.PAGESIZE) * mmap.PAGESIZE
    if getattr(_staging, "buffer", None) is None or len(_staging.buffer) < size:
        _staging.buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    return _staging.buffer
