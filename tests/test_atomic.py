"""Atomic writes: a failure or a kill part-way leaves the previous file intact.

Covers common/fsutil.py (write_text_atomic, atomic_output), the .rec/.idx packing
of common/prep/pack.py and checkpoints (common/checkpoint.py). A kill is a real
SIGKILL of a child process whose writer wrote half of its bytes first, so the
test also proves the write was under way when the process died.
"""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint, fsutil
from common.cli import UserError
from common.prep.pack import pack_set
from tools.imagegen import make_class_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = "the previous content\n" * 100


def run_child(code, *args):
    """Run `code` in a fresh interpreter (repo importable); returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class _DiskFull:
    """A text file whose write() stores half of the text, then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail_in_write_text_atomic(path, monkeypatch):
    monkeypatch.setattr(fsutil, "open", lambda *a, **k: _DiskFull(open(*a, **k)), raising=False)
    with pytest.raises(OSError, match="No space"):
        fsutil.write_text_atomic(path, "new content\n" * 1000)


def _fail_in_atomic_output_block(path, monkeypatch):
    with pytest.raises(RuntimeError, match="writer failed"):
        with fsutil.atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new cont")
            raise RuntimeError("writer failed")


@pytest.mark.parametrize("fail", [_fail_in_write_text_atomic, _fail_in_atomic_output_block],
                         ids=["disk-full-in-write_text_atomic", "exception-in-atomic_output"])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path, monkeypatch, fail):
    path = tmp_path / "classes.txt"
    path.write_text(OLD)
    fail(str(path), monkeypatch)
    assert path.read_text() == OLD
    assert os.listdir(tmp_path) == ["classes.txt"]  # the temporary file was removed


def test_a_kill_during_write_text_atomic_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(OLD)
    new = "new content\n" * 10_000
    child = run_child("""
        import os, signal, sys
        from common import fsutil
        class Dying:  # writes half of the text, makes it reach the disk, dies
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *exc): self.f.close()
            def write(self, text):
                self.f.write(text[: len(text) // 2]); self.f.flush(); os.fsync(self.f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        fsutil.open = lambda *a, **k: Dying(open(*a, **k))
        fsutil.write_text_atomic(sys.argv[1], "new content\\n" * 10_000)
        """, path)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert path.read_text() == OLD
    # The kill came mid-write: half of the new text sits under the temporary name only.
    assert read(fsutil.partial_path(str(path))) == new[: len(new) // 2].encode()
    fsutil.write_text_atomic(str(path), new)  # the next run replaces both
    assert path.read_text() == new and os.listdir(tmp_path) == ["summary.json"]


def test_atomic_output_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.stat(a).st_ino)),
                                                     real_replace(a, b)))
    path = tmp_path / "x.txt"
    fsutil.write_text_atomic(str(path), "content")
    file_inode, folder_inode = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_inode), ("replace", file_inode), ("fsync", folder_inode)]


# ---------------------------------------------------------------- .rec / .idx packing

@pytest.fixture
def packed(tmp_path):
    """A source tree and a finished pack of it: (root, items, rec, idx, rec bytes, idx bytes)."""
    root = tmp_path / "src"
    names = make_class_tree(str(root), [6, 6], min_side=20, max_side=40)
    items = [(label, f"{name}/{f}") for label, name in enumerate(names)
             for f in sorted(os.listdir(root / name))]
    rec, idx = str(tmp_path / "out" / "x-train.rec"), str(tmp_path / "out" / "x-train.idx")
    os.makedirs(os.path.dirname(rec))
    pack_set(str(root), items, rec, idx, resize=16, quality=90, workers=1, desc="pack")
    return str(root), items, rec, idx, read(rec), read(idx)


def test_a_kill_while_packing_keeps_the_previous_rec_and_idx(packed):
    root, items, rec, idx, old_rec, old_idx = packed
    child = run_child("""
        import json, os, signal, sys
        from common import records
        from common.prep.pack import pack_set
        root, rec, idx, items = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        real_write = records.RecordWriter.write
        def write_then_die(self, key, label, payload):  # three records reach the files, then a kill
            real_write(self, key, label, payload)
            if key == 2:
                self._idx.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        records.RecordWriter.write = write_then_die
        pack_set(root, items, rec, idx, resize=24, quality=50, workers=1, desc="pack")
        """, root, rec, idx, json.dumps(items))
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (read(rec), read(idx)) == (old_rec, old_idx)
    # It died mid-set: three index lines were written, under the temporary name.
    assert len(read(fsutil.partial_path(idx)).splitlines()) == 3


def test_a_failure_while_packing_keeps_the_previous_rec_and_idx(packed):
    root, items, rec, idx, old_rec, old_idx = packed
    with open(os.path.join(root, items[3][1]), "wb") as f:
        f.write(b"rewritten since it was checked")  # record 3 no longer decodes
    with pytest.raises(UserError, match="can no longer be read"):
        pack_set(root, items, rec, idx, resize=24, quality=50, workers=1, desc="pack")
    assert (read(rec), read(idx)) == (old_rec, old_idx)
    assert sorted(os.listdir(os.path.dirname(rec))) == ["x-train.idx", "x-train.rec"]


# ---------------------------------------------------------------- checkpoints

def _params(value):
    return {"fc_weight": mx.nd.full((4, 3), value)}, {"bn_moving_var": mx.nd.full((4,), value)}


def test_a_kill_during_the_params_write_keeps_the_previous_params_and_digest(tmp_path):
    prefix = str(tmp_path / "run" / "net")
    symbol = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=4, name="fc")
    checkpoint.save_checkpoint(prefix, 2, symbol, *_params(1.0))
    params = checkpoint.params_path(prefix, 2)
    old = read(params)
    child = run_child("""
        import os, signal, sys
        import mxnet as mx
        from common import checkpoint, paramfile
        real_save = paramfile.save
        def save_half_then_die(fname, data):  # half of the file reaches the disk, then a kill
            real_save(fname, data)
            with open(fname, "r+b") as f:
                f.truncate(os.path.getsize(fname) // 2); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        paramfile.save = save_half_then_die
        symbol = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=4, name="fc")
        checkpoint.save_checkpoint(sys.argv[1], 2, symbol, {"fc_weight": mx.nd.full((4, 3), 7.0)},
                                   {"bn_moving_var": mx.nd.full((4,), 7.0)})
        """, prefix)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert read(params) == old
    assert checkpoint.recorded_digest(params) == hashlib.sha256(old).hexdigest()
    _, args, aux = checkpoint.load_checkpoint(prefix, 2)  # verifies the digest
    assert np.all(args["fc_weight"].asnumpy() == 1.0) and np.all(aux["bn_moving_var"].asnumpy() == 1.0)
    assert 0 < len(read(fsutil.partial_path(params))) < len(old)  # it died mid-save
