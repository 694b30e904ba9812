# Set-up on a fresh machine is two commands: `make demo` and `make test`.
# Both create .venv (python3 -m venv) and install the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slurm demo bench bench-full clean-venv

# One install of everything (the tests run the demo too), so that requirements.txt's
# numpy<1.24 pin holds for every package.
$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest

# Opt-in, not part of `make test`: slurm/train.sbatch on a real single-node Slurm that
# the tests start and stop themselves (tests_slurm/). Needs root: installs Debian's
# slurm-wlm and munge with apt when missing. `timeout` bounds the run; on its SIGTERM
# the tests still stop their daemons, and 30 s later it kills. -n 0: one cluster at a time
# (pytest.ini's -n auto would start one per worker on the same host).
test-slurm: $(STAMP)
	dpkg -s slurm-wlm munge >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; }
	timeout -k 30 600 $(PY) -m pytest -n 0 tests_slurm

demo: $(STAMP)
	$(PY) -m tools.demo --out demo

# Every benchmark of bench/__main__.py's STEPS (~12 min on 2 cores), each writing
# bench/results/NAME.json; then bench/results.json and the table bench/results.md (bench/README.md).
bench: $(STAMP)
	$(PY) -m bench

# --full also runs bench_recipe, whose photographs come with scikit-image (requirements-bench.txt).
bench-full: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m bench --full

clean-venv:
	rm -rf $(VENV)
