"""`python -m common.prep`: what prepare_data.sh runs (see common/prep/main.py)."""
from common import venv

venv.ensure("prepare_data.sh")  # before the imports below, which need the requirements

import sys  # noqa: E402

from common.cli import run_entry  # noqa: E402
from common.prep.main import main  # noqa: E402

sys.exit(run_entry(main, "prepare_data.sh"))
