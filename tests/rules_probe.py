"""A worker function for tests/test_rules.py, importable by a spawned worker process.

It does a real preparation worker's job (decode and JPEG-encode an image through
the same functions) and reports which heavy libraries the worker has loaded.
Nothing here may import MXNet: that is what it checks.
"""
import sys

from common.prep.pack import encode_record


def worker_libraries(path):
    """(the check's verdict, JPEG size, sorted heavy modules loaded in this process)."""
    payload, reason = encode_record((path, 16, 90))
    loaded = sorted(name for name in ("mxnet", "matplotlib", "sklearn") if name in sys.modules)
    return reason, len(payload or b""), loaded
