"""MXNet's import without the optional packages it loads for features this project never uses.

mxnet/__init__ imports, whenever they are installed, scikit-learn (model.py: a base
class for the deprecated FeedForward) and SciPy (scipy.sparse for sparse-matrix
conversion in ndarray, scipy.stats in test_utils and contrib.quantization's
calibration). requirements.txt installs scikit-learn for --head logistic|svm, and
SciPy with it, so train_caltech.py (whose module imports load MXNet first) paid for both at start-up: `import mxnet`
took 2.2 s here and 1.55 s without them (2 cores, 4 paired runs; bench_train's
launch_to_first_batch_seconds shows it in a whole run). MXNet guards each of these imports with
`except ImportError`, so refusing them during its import leaves it as it is without
them installed; they stay importable afterwards for the code that needs them
(common/train/linear.py imports scikit-learn itself).

Standard library only: it runs before MXNet is imported.
"""
import importlib.abc
import sys

OPTIONAL = ("sklearn", "scipy")  # top-level packages MXNet's import may leave out


class _Refuse(importlib.abc.MetaPathFinder):
    """A finder that answers ModuleNotFoundError for `names` and their submodules."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (left out of MXNet's import)", name=fullname)
        return None


def import_mxnet():
    """Import MXNet (once per process) without OPTIONAL; returns the module.

    A package imported before stays as it is: MXNet then uses it as it would anyway.
    """
    if "mxnet" in sys.modules:
        return sys.modules["mxnet"]
    finder = _Refuse(name for name in OPTIONAL if name not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        import mxnet
    finally:
        sys.meta_path.remove(finder)
    return mxnet
