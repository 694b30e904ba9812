# Set-up on a fresh machine is two commands: `make demo` and `make test`.
# Both create .venv (python3 -m venv) and install the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo bench clean-venv

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

# Installed together with requirements.txt so its numpy<1.24 pin holds.
$(DEMO_STAMP): $(STAMP) requirements-demo.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-demo.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest

demo: $(DEMO_STAMP)
	$(PY) -m tools.demo --out demo

bench: $(STAMP)
	$(PY) -m bench.bench_pack

clean-venv:
	rm -rf $(VENV)
