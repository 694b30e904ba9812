#!/usr/bin/env python3
"""Launch a distributed job: MXNet's tools/launch.py flags, on Python 3.11, supervised.

    python launch.py -n 2 -s 1 --launcher local python train_caltech.py ... --kv-store dist_sync
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("launch.py")

import sys

from common import cli
from common.cluster import launch

if __name__ == "__main__":
    sys.exit(cli.run_entry(launch.main, "launch.py"))
