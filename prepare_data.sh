#!/usr/bin/env bash
# Split an image-folder dataset (default: Caltech-256, downloaded and verified)
# into seeded train/val lists and pack both into MXNet RecordIO under data/.
#   bash prepare_data.sh                      # Caltech-256, 60 train images per class
#   bash prepare_data.sh --src DIR --out OUT  # any folder with one subfolder per class
#   bash prepare_data.sh --src IMAGES --labels-csv labels.csv  # one folder of images + (id, label) rows
#   bash prepare_data.sh --help               # every option and its default
# The logic lives in common/prep/. Python: $PYTHON, else this project's .venv,
# else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m common.prep "$@"
