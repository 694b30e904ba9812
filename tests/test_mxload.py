"""common/mxload.py: MXNet imported without the scikit-learn and SciPy it never needs here."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEFT_OUT = ("sklearn", "scipy")


def _python(code, *args, timeout=120):
    """(stdout, stderr) of `python -c code` in the repository, checked."""
    done = subprocess.run([sys.executable, *args, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_mxnet_works_without_them_and_they_stay_importable():
    out, _ = _python(
        "import sys\n"
        "from common import mxload\n"
        "mx = mxload.import_mxnet()\n"
        "print(sorted(n for n in sys.modules if n.partition('.')[0] in mxload.OPTIONAL))\n"
        "print(mx.nd.ones((2, 3)).sum().asscalar())\n"
        "print(any(isinstance(f, mxload._Refuse) for f in sys.meta_path))\n"
        "from sklearn.linear_model import LogisticRegression\n"  # what --head logistic needs afterwards
        "print(LogisticRegression().fit([[0.0], [1.0]], [0, 1]).predict([[0.9]])[0])\n")
    assert out.split("\n")[:4] == ["[]", "6.0", "False", "1"]


def test_a_package_imported_before_is_left_as_it_is():
    out, _ = _python("import sklearn.base\n"
                     "from common import mxload\n"
                     "mx = mxload.import_mxnet()\n"
                     "print(mx.model.BASE_ESTIMATOR is sklearn.base.BaseEstimator)\n")
    assert out.strip() == "True"


@pytest.mark.parametrize("script", ["train_caltech.py"])
def test_training_starts_without_them(script):
    out, _ = _python(f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
                     "try:\n"
                     f"    runpy.run_path({script!r}, run_name='__main__')\n"
                     "except SystemExit:\n"  # --help's exit
                     "    print(sorted(n for n in sys.modules if n == 'mxnet' or n.partition('.')[0] in "
                     f"{LEFT_OUT!r}))\n")
    assert "usage:" in out and out.strip().splitlines()[-1] == "['mxnet']"
