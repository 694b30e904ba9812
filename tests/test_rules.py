"""The three rules the layout of common/ stands for (README: "Where things are").

1. Data preparation (common/prep/) never imports MXNet at module level: its
   workers are spawned processes that must stay light.
2. Inference (common/infer/, predict.py, score.py, extract_features.py) never
   depends on training code (common/train/); the shared modules in common/
   depend on no room at all.
3. predict.py's image preprocessing (common.transforms.preprocess) gives exactly
   what the validation iterator (common.transforms.record_iter) feeds the network.

Rules 1 and 2 are checked in fresh interpreters (this one has imported
everything) and, for rule 2, also by reading the import statements.
"""
import ast
import glob
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from common import records, transforms
from common.prep.pack import pack_set
from tools.imagegen import class_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREP_MODULES = ["common.prep.main", "common.prep.pack", "common.prep.imagefolder", "common.prep.labels",
                "common.prep.download", "common.prep.parallel"]
ROOMS = ("prep", "train", "infer", "cluster")
INFERENCE_ENTRY_POINTS = ("predict.py", "score.py", "extract_features.py")


def fresh_python(code):
    """Run `code` in a new interpreter at the repository root; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------- rule 1

def test_preparation_modules_import_without_mxnet():
    imports = "; ".join(f"import {name}" for name in PREP_MODULES)
    loaded = fresh_python(f"import sys; {imports}; print(sorted(m for m in sys.modules "
                          f"if m.split('.')[0] == 'mxnet'))")
    assert loaded.strip() == "[]"


def test_spawned_preparation_workers_run_without_mxnet(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), class_image(np.random.default_rng(i), i, 30, 40))
    paths = sorted(str(p) for p in tmp_path.iterdir())
    out = fresh_python(
        "from common.prep.parallel import parallel_map; from tests.rules_probe import worker_libraries; "
        f"print(list(parallel_map(worker_libraries, {paths!r}, workers=2, desc='probe', chunksize=1)))")
    results = eval(out)  # a list of tuples printed by the probe above
    assert len(results) == len(paths)
    for reason, jpeg_bytes, loaded in results:
        assert reason is None and jpeg_bytes > 0  # the worker did the real work ...
        assert loaded == []  # ... without MXNet (or matplotlib, scikit-learn)


def test_a_whole_preparation_runs_with_mxnet_unimportable(tmp_path):
    # Beyond rule 1: packing writes RecordIO itself and records MXNet's version from
    # the package's metadata, so a run never pays MXNet's 1.5-2 s import.
    from tools.imagegen import make_class_tree
    make_class_tree(str(tmp_path / "src"), [4, 4], min_side=20, max_side=40)
    fresh_python("import sys; sys.modules['mxnet'] = None; from common.prep.main import main; "
                 f"main(['--src', {str(tmp_path / 'src')!r}, '--out', {str(tmp_path / 'out')!r}, "
                 "'--train-per-class', '2', '--resize', '16', '--num-thread', '2'])")
    labels = records.read_labels(str(tmp_path / "out" / "src-train.rec"), str(tmp_path / "out" / "src-train.idx"))
    assert sorted(labels.tolist()) == [0, 0, 1, 1]


# ---------------------------------------------------------------- rule 2

def imported_modules(path):
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    names = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def room_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "common" and parts[1] in ROOMS else None


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "common", "infer", "*.py")))
                         + [os.path.join(REPO, name) for name in INFERENCE_ENTRY_POINTS],
                         ids=os.path.basename)
def test_inference_code_imports_no_training_code(path):
    assert [m for m in imported_modules(path) if room_of(m) == "train"] == []


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "common", "*.py"))),
                         ids=os.path.basename)
def test_shared_modules_import_no_room(path):
    assert [m for m in imported_modules(path) if room_of(m)] == []


def test_inference_entry_points_load_no_training_module():
    modules = [name[:-3] for name in INFERENCE_ENTRY_POINTS] + [
        f"common.infer.{os.path.basename(p)[:-3]}" for p in glob.glob(os.path.join(REPO, "common", "infer", "*.py"))
        if not p.endswith("__init__.py")]
    loaded = fresh_python(f"import sys, {', '.join(sorted(modules))}; "
                          "print(sorted(m for m in sys.modules if m.startswith('common.train')))")
    assert loaded.strip() == "[]"


def test_the_import_reader_sees_relative_imports():
    """The static checks above are only as good as this reader."""
    callbacks = imported_modules(os.path.join(REPO, "common", "train", "callbacks.py"))
    assert "common.checkpoint" in callbacks  # from .. import checkpoint
    assert "common.cli.UserError" in callbacks  # from ..cli import UserError
    loop = imported_modules(os.path.join(REPO, "common", "train", "loop.py"))
    assert "common.train.callbacks" in loop  # from . import callbacks
    assert room_of("common.train.loop") == "train" and room_of("common.transforms") is None


# ---------------------------------------------------------------- rule 3

# (height, width) of the packed images: odd and even crop margins, landscape and
# portrait, and images smaller than the crop (MXNet enlarges those).
PACKED_SIZES = [(20, 20), (21, 26), (27, 19), (18, 33), (25, 24), (10, 12), (12, 30), (7, 9), (30, 14)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A .rec of generated images packed as prepare_data.sh packs them (resize 0: sizes kept),
    and each record's JPEG payload as a file: the same bytes the iterator decodes."""
    import mxnet as mx
    root = tmp_path_factory.mktemp("rule3")
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(PACKED_SIZES):
        cv2.imwrite(str(root / f"{i}.png"), class_image(rng, i, height, width))
    rec, idx = str(root / "set.rec"), str(root / "set.idx")
    pack_set(str(root), [(i % 3, f"{i}.png") for i in range(len(PACKED_SIZES))], rec, idx,
             resize=0, quality=95, workers=1, desc="pack")
    reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    payloads = []
    for key in reader.keys:
        payloads.append(str(root / f"payload-{key}.jpg"))
        with open(payloads[-1], "wb") as f:
            f.write(mx.recordio.unpack(reader.read_idx(key))[1])
    reader.close()
    return records.check_record_set(rec, 3), payloads


@pytest.mark.parametrize("image_shape", [(3, 16, 16), (3, 16, 24), (3, 24, 16)], ids=str)
def test_preprocess_is_exactly_what_the_validation_iterator_feeds(packed, image_shape):
    record_set, payloads = packed
    batches = transforms.record_iter(record_set, image_shape=image_shape, batch_size=4, train=False,
                                     threads=1)
    fed = np.concatenate([batch.data[0].asnumpy() for batch in batches])[:len(payloads)]
    for path, want in zip(payloads, fed):
        got = transforms.preprocess(path, 0, image_shape)
        assert got.shape == image_shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=path)


# ---------------------------------------------------------------- the README's map

def readme_map():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    start = text.index("## Where things are")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_where_things_are_matches_the_tree():
    section = readme_map()
    modules = [p for folder in ("common", "common/prep", "common/train", "common/infer", "common/cluster", "tools",
                                                "symbols")
               for p in glob.glob(os.path.join(REPO, folder, "*.py")) if not p.endswith("__init__.py")]
    missing = [os.path.relpath(p, REPO) for p in modules
               if os.path.splitext(os.path.basename(p))[0] not in section]
    assert missing == [], "modules the README's map does not name"
    named = set(re.findall(r"\b([a-z_]+\.py)\b", section))
    existing = {os.path.basename(p) for p in modules + glob.glob(os.path.join(REPO, "*.py"))
                + glob.glob(os.path.join(REPO, "tests", "*.py")) + glob.glob(os.path.join(REPO, "bench", "*.py"))
                + glob.glob(os.path.join(REPO, "tests_slurm", "*.py"))}
    assert sorted(named - existing) == [], "files the README's map names that do not exist"
