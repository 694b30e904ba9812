"""Repository root on sys.path, so tests import `common` and `symbols` as users do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import threads  # noqa: E402

# Before any test imports MXNet: the tests run in-process with the cores an entry script would use.
threads.configure([])
