"""common/paramfile.py: mx.nd.save's .params bytes, written with O_DIRECT from a staging buffer."""
import errno
import hashlib
import os

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint, paramfile


def arrays():
    """Every dtype the format carries, shapes of 1 to 4 dimensions, sizes that end mid-block,
    a non-ASCII name, and an order that is not sorted (the file keeps the dict's)."""
    rng = np.random.default_rng(0)
    return {
        "arg:conv0_weight": mx.nd.array(rng.normal(size=(64, 3, 7, 7)), dtype="float32"),
        "aux:bn_moving_var": mx.nd.array(rng.uniform(size=(13,)), dtype="float32"),
        "arg:fc_bias": mx.nd.array(rng.normal(size=(5,)), dtype="float64"),
        "arg:half": mx.nd.array(rng.normal(size=(3, 333)), dtype="float16"),
        "arg:bytes": mx.nd.array(rng.integers(0, 255, (17, 3)), dtype="uint8"),
        "arg:ints": mx.nd.array(rng.integers(-9, 9, (2, 2, 2)), dtype="int32"),
        "arg:longs": mx.nd.array(rng.integers(-9, 9, (1,)), dtype="int64"),
        "arg:small": mx.nd.array(rng.integers(-9, 9, (4,)), dtype="int8"),
        "arg:größe": mx.nd.array([1.5], dtype="float32"),
    }


def reference(tmp_path, data):
    path = str(tmp_path / "reference.params")
    mx.nd.save(path, data)
    with open(path, "rb") as f:
        return f.read()


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def staging(monkeypatch):
    """Set the staging buffer's size for this test (each test starts with a new buffer)."""
    def set_size(size):
        monkeypatch.setattr(paramfile, "STAGING_BYTES", size)
        monkeypatch.setattr(paramfile._staging, "buffer", None, raising=False)
    set_size(paramfile.STAGING_BYTES)
    return set_size


@pytest.mark.parametrize("size", [paramfile.STAGING_BYTES, 3 * 4096])
def test_the_bytes_are_mx_nd_saves_and_the_digest_theirs(tmp_path, staging, size):
    """At the default buffer and one smaller than an array (the file goes out in many blocks)."""
    staging(size)
    data = arrays()
    path = str(tmp_path / "ours.params")
    digest = paramfile.save(path, data)
    assert read(path) == reference(tmp_path, data)
    assert digest == hashlib.sha256(read(path)).hexdigest()
    loaded = mx.nd.load(path)
    assert list(loaded) == list(data)
    for name, array in data.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name].asnumpy(), array.asnumpy())


def test_o_direct_is_used_and_a_refusal_falls_back_to_an_ordinary_write(tmp_path, staging, monkeypatch):
    opened = []
    real_open = os.open

    def refusing_open(path, flags, *args):
        opened.append(bool(flags & os.O_DIRECT))
        if flags & os.O_DIRECT and refuse:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)
    monkeypatch.setattr(paramfile.os, "open", refusing_open)
    data, expected = arrays(), reference(tmp_path, arrays())
    for refuse in (False, True):
        opened.clear()
        path = str(tmp_path / f"refused-{refuse}.params")
        digest = paramfile.save(path, data)
        assert opened == ([True, False] if refuse else [True])
        assert read(path) == expected and digest == hashlib.sha256(expected).hexdigest()


def test_arrays_it_does_not_cover_are_saved_by_mxnet(tmp_path):
    data = {"arg:sparse": mx.nd.array(np.eye(4)).tostype("row_sparse"), "arg:dense": mx.nd.ones((2,))}
    path = str(tmp_path / "sparse.params")
    assert paramfile.save(path, data) is None  # mx.nd.save wrote it: save_file_atomic hashes the file
    loaded = mx.nd.load(path)
    assert loaded["arg:sparse"].stype == "row_sparse"
    assert all(np.array_equal(loaded[k].asnumpy(), v.asnumpy()) for k, v in data.items())


def test_a_failed_write_names_the_checkpoint_file(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(paramfile.os, "write", full_disk)
    path = str(tmp_path / "run-0001.params")
    with pytest.raises(OSError) as caught:
        checkpoint.save_file_atomic(path, lambda tmp: paramfile.save(tmp, arrays()))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, path)
    assert os.listdir(tmp_path) == []  # no partial file left
