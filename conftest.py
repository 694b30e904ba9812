"""Repository root on sys.path, so tests import `common` and `symbols` as users do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
