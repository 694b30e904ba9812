"""Repository root on sys.path, so tests import `common` and `symbols` as users do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import threads  # noqa: E402

# Before any test imports MXNet: the tests run in-process with the cores an entry script would
# use, shared among pytest-xdist's workers (`make test` runs one per core) as launch.py shares
# them among its local workers.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.update(threads.share_env(_workers, []))
threads.configure([])
