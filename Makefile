# Set-up on a fresh machine is two commands: `make demo` and `make test`.
# Both create .venv (python3 -m venv) and install the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean-venv

# One install of everything (the tests run the demo too), so that requirements.txt's
# numpy<1.24 pin holds for scikit-learn as well.
$(STAMP): requirements.txt requirements-test.txt requirements-demo.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m tools.demo --out demo

bench: $(STAMP)
	$(PY) -m bench.bench_pack

clean-venv:
	rm -rf $(VENV)
