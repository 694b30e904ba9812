"""common/train/modelzoo.py against a loopback copy of the zoo, and common/checkpoint.py.

The zoo publishes no checksums, so the first download records each file's SHA-256
beside it and every later use is checked against that record. The "zoo" here is a
tiny ResNet-20 checkpoint served by tests/loopback_http.py on 127.0.0.1 under the
zoo's own relative paths; every server is stopped by its fixture.
"""
import functools
import hashlib
import os
import time

import mxnet as mx
import pytest

from common import checkpoint
from common.train import modelzoo
from common.prep import download as dl
from common.cli import UserError
from tests import trainkit
from tests.loopback_http import LoopbackServer

NAME = "imagenet1k-resnet-50"
_SYMBOL_FILE, _PARAMS_FILE, ZOO_EPOCH = modelzoo.MODELS[NAME]
# Served under the zoo's own relative paths, so the URLs the code builds are tested too.
SYMBOL_URL_PATH, PARAMS_URL_PATH = "/" + _SYMBOL_FILE, "/" + _PARAMS_FILE


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def flip_last_byte(path):
    """Corrupt a file the way a bad disk or an interrupted copy can: one byte."""
    data = bytearray(read(path))
    data[-1] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture(autouse=True)
def fast_downloads(monkeypatch):
    # modelzoo calls dl.download with its production timeouts (15 s / 60 s) and
    # backoff; a test that goes wrong must fail in seconds, not minutes.
    monkeypatch.setattr(dl, "download", functools.partial(dl.download, timeout=(2.0, 5.0),
                                                          retries=1, backoff=0))


@pytest.fixture(scope="module")
def zoo_bytes(tmp_path_factory):
    """(symbol bytes, params bytes) of a tiny zoo-format checkpoint."""
    prefix = str(tmp_path_factory.mktemp("published") / "resnet-50")
    trainkit.make_pretrained(prefix, num_classes=3)
    return read(checkpoint.symbol_path(prefix)), read(checkpoint.params_path(prefix, 0))


@pytest.fixture
def server(zoo_bytes):
    with LoopbackServer({SYMBOL_URL_PATH: zoo_bytes[0], PARAMS_URL_PATH: zoo_bytes[1]}) as srv:
        yield srv  # stop() shuts down and joins the server thread


@pytest.fixture
def model_dir(tmp_path):
    return str(tmp_path / "model")


def resolve(server, model_dir, name=NAME, epoch=0):
    return modelzoo.resolve_pretrained(name, epoch, model_dir, base_url=server.url("/"))


def local_files(model_dir):
    prefix = os.path.join(model_dir, NAME)
    return checkpoint.symbol_path(prefix), checkpoint.params_path(prefix, ZOO_EPOCH)


# ---------------------------------------------------------------- zoo downloads

def test_zoo_name_downloads_both_files_under_the_zoo_name(server, model_dir, zoo_bytes):
    prefix, epoch = resolve(server, model_dir)
    assert (prefix, epoch) == (os.path.join(model_dir, NAME), ZOO_EPOCH)
    symbol_file, params_file = local_files(model_dir)
    assert symbol_file.endswith("imagenet1k-resnet-50-symbol.json")
    assert params_file.endswith("imagenet1k-resnet-50-0000.params")
    assert (read(symbol_file), read(params_file)) == zoo_bytes
    assert [r.status for r in server.hits(SYMBOL_URL_PATH)] == [200]
    assert [r.status for r in server.hits(PARAMS_URL_PATH)] == [200]


def test_first_download_records_sha256_digests(server, model_dir, zoo_bytes):
    resolve(server, model_dir)
    for path, data in zip(local_files(model_dir), zoo_bytes):
        # sha256sum's format, so `sha256sum -c` can check the files too.
        with open(path + ".sha256", encoding="utf-8") as f:
            assert f.read() == f"{sha256(data)}  {os.path.basename(path)}\n"


def test_downloaded_checkpoint_loads(server, model_dir, zoo_bytes):
    prefix, epoch = resolve(server, model_dir)
    symbol, args, aux = checkpoint.load_checkpoint(prefix, epoch)
    assert symbol.list_outputs() == ["softmax_output"]
    assert "fc1_weight" in args and "bn1_moving_var" in aux


def test_second_call_makes_no_request(server, model_dir):
    first = resolve(server, model_dir)
    count = len(server.requests)
    assert resolve(server, model_dir) == first
    assert len(server.requests) == count


def test_corrupt_cached_file_is_fetched_again(server, model_dir, zoo_bytes):
    resolve(server, model_dir)
    _, params_file = local_files(model_dir)
    flip_last_byte(params_file)
    resolve(server, model_dir)
    assert read(params_file) == zoo_bytes[1]
    assert len(server.hits(PARAMS_URL_PATH)) == 2
    assert len(server.hits(SYMBOL_URL_PATH)) == 1  # the intact file is not fetched again


@pytest.mark.parametrize("damage", ["corrupt", "deleted"])
def test_changed_server_file_fails_its_recorded_checksum(server, model_dir, zoo_bytes, damage):
    resolve(server, model_dir)
    _, params_file = local_files(model_dir)
    server.add(PARAMS_URL_PATH, zoo_bytes[1][:-1] + b"\x00")  # the zoo's file changed
    if damage == "corrupt":
        flip_last_byte(params_file)
    else:
        os.remove(params_file)
    with pytest.raises(UserError, match="checksum"):
        resolve(server, model_dir)
    # No bad file under any name a later run could pick up; the record is kept.
    assert not os.path.exists(params_file)
    assert not os.path.exists(params_file + ".part")
    assert checkpoint.recorded_digest(params_file) == sha256(zoo_bytes[1])


def test_missing_zoo_file_is_a_user_error_and_leaves_nothing(server, model_dir):
    server.files.pop(PARAMS_URL_PATH)
    with pytest.raises(UserError, match="404"):
        resolve(server, model_dir)
    _, params_file = local_files(model_dir)
    assert not [p for p in (params_file, params_file + ".sha256", params_file + ".part")
                if os.path.exists(p)]


def test_unreachable_zoo_fails_at_once_and_points_to_a_local_checkpoint(model_dir, monkeypatch):
    calls, real_fetch = [], dl._fetch
    monkeypatch.setattr(dl, "_fetch", lambda url, *a: (calls.append(url), real_fetch(url, *a))[1])
    started = time.monotonic()
    with pytest.raises(UserError) as error:  # .invalid never resolves (RFC 2606)
        modelzoo.resolve_pretrained(NAME, 0, model_dir, base_url="http://zoo.invalid/models/")
    assert time.monotonic() - started < 3
    assert calls == ["http://zoo.invalid/models/" + _SYMBOL_FILE]  # no retry, no second file
    message = str(error.value)
    assert "zoo.invalid not found" in message and "pass --pretrained-model PREFIX" in message
    assert "\n" not in message and len(message) < 250 and "Caused by" not in message
    assert not os.path.exists(model_dir)


def test_local_prefix_is_returned_as_is(server, tmp_path, model_dir):
    prefix = str(tmp_path / "mine" / "finetuned")
    trainkit.make_pretrained(prefix, num_classes=3, epoch=3)
    assert modelzoo.resolve_pretrained(prefix, 3, model_dir, base_url=server.url("/")) == (prefix, 3)
    assert server.requests == []
    assert not os.path.exists(model_dir)


def test_local_prefix_without_that_epoch_names_the_missing_file(server, tmp_path, model_dir):
    prefix = str(tmp_path / "mine" / "finetuned")
    trainkit.make_pretrained(prefix, num_classes=3, epoch=3)
    with pytest.raises(UserError) as error:
        modelzoo.resolve_pretrained(prefix, 4, model_dir, base_url=server.url("/"))
    assert checkpoint.params_path(prefix, 4) in str(error.value)


def test_unknown_name_lists_the_zoo_names(server, model_dir):
    with pytest.raises(UserError) as error:
        resolve(server, model_dir, name="imagenet1k-resnet-51")
    message = str(error.value)
    assert "imagenet1k-resnet-51" in message
    assert all(name in message for name in modelzoo.MODELS)
    assert server.requests == []


@pytest.mark.parametrize("network, expected", [("resnet-50", "imagenet1k-resnet-50"),
                                               ("resnet-152", "imagenet1k-resnet-152"),
                                               ("resnet-20", None), ("resnet-200", None)])
def test_default_pretrained(network, expected):
    assert modelzoo.default_pretrained(network) == expected


# ---------------------------------------------------------------- checkpoint files

@pytest.fixture
def saved(tmp_path):
    """A checkpoint written by common.checkpoint.save_checkpoint (with digests)."""
    prefix = str(tmp_path / "run" / "net")
    _, symbol, args, aux = trainkit.make_pretrained(str(tmp_path / "src" / "net"), num_classes=3)
    checkpoint.save_checkpoint(prefix, 2, symbol, args, aux)
    return prefix, symbol, args, aux


def test_save_checkpoint_records_digests(saved):
    prefix = saved[0]
    for path in (checkpoint.symbol_path(prefix), checkpoint.params_path(prefix, 2)):
        assert checkpoint.recorded_digest(path) == sha256(read(path)), path
    # Nothing left under a temporary name.
    assert sorted(os.listdir(os.path.dirname(prefix))) == [
        "net-0002.params", "net-0002.params.sha256", "net-symbol.json", "net-symbol.json.sha256"]


def test_saved_checkpoint_loads_bit_exact(saved):
    prefix, symbol, args, aux = saved
    loaded_symbol, loaded_args, loaded_aux = checkpoint.load_checkpoint(prefix, 2)
    assert loaded_symbol.tojson() == symbol.tojson()
    for expected, loaded in ((args, loaded_args), (aux, loaded_aux)):
        assert set(loaded) == set(expected)
        assert all(loaded[n].asnumpy().tobytes() == expected[n].asnumpy().tobytes() for n in expected)


@pytest.mark.parametrize("which", ["symbol", "params"])
def test_flipped_byte_is_reported_corrupt(saved, which):
    # MXNet itself would load a flipped byte in the params silently.
    prefix = saved[0]
    path = checkpoint.symbol_path(prefix) if which == "symbol" else checkpoint.params_path(prefix, 2)
    flip_last_byte(path)
    with pytest.raises(UserError) as error:
        checkpoint.load_checkpoint(prefix, 2)
    assert "corrupt" in str(error.value) and path in str(error.value)


@pytest.mark.parametrize("which", ["symbol", "params"])
def test_missing_file_is_named(saved, which):
    prefix = saved[0]
    path = checkpoint.symbol_path(prefix) if which == "symbol" else checkpoint.params_path(prefix, 2)
    os.remove(path)
    with pytest.raises(UserError) as error:
        checkpoint.load_checkpoint(prefix, 2)
    assert path in str(error.value) and "not found" in str(error.value)


def test_unreadable_params_without_digest_is_a_user_error(tmp_path):
    # A zoo-format file has no .sha256: a truncated one must still end in a UserError.
    prefix, *_ = trainkit.make_pretrained(str(tmp_path / "zoo" / "net"), num_classes=3)
    path = checkpoint.params_path(prefix, 0)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load_checkpoint(prefix, 0)


def test_unreadable_params_message_gives_the_reason(tmp_path):
    prefix, *_ = trainkit.make_pretrained(str(tmp_path / "zoo" / "net"), num_classes=3)
    path = checkpoint.params_path(prefix, 0)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError) as error:
        checkpoint.load_checkpoint(prefix, 0)
    assert "Traceback" not in str(error.value)
    assert "NDArray" in str(error.value)  # MXNet 1.9.1: 'Invalid NDArray file format'


def test_unexpected_params_key_is_a_user_error(tmp_path):
    # A params file not in the arg:/aux: format (e.g. a Gluon save_parameters file).
    prefix, symbol, args, _ = trainkit.make_pretrained(str(tmp_path / "zoo" / "net"), num_classes=3)
    mx.nd.save(checkpoint.params_path(prefix, 0), dict(args))
    with pytest.raises(UserError, match="unexpected key"):
        checkpoint.load_checkpoint(prefix, 0)


def test_corrupt_symbol_without_digest_is_a_user_error(tmp_path):
    prefix, *_ = trainkit.make_pretrained(str(tmp_path / "zoo" / "net"), num_classes=3)
    flip_last_byte(checkpoint.symbol_path(prefix))  # '}' becomes 0x82
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load_checkpoint(prefix, 0)
