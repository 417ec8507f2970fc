# `make demo` and `make test` each build .venv on first use; nothing else needs installing by hand.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgewise-installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU build that lies on disk; installing it first keeps pip from a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,agent,video,fleet,federated,openvino,test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgewise quickstart --out demo-out

# One pytest worker per core, each with one math thread (two workers each using every core for torch's
# kernels are slower than one): 4m46s instead of 6m22s on 2 cores. `pytest -q` alone runs it serially.
# Bytecode and pytest's rewritten test modules are cached even where the environment says not to
# (PYTHONDONTWRITEBYTECODE): compiling ~340 modules afresh cost each worker ~3.5 s of every run.
PARALLEL := env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n auto

# loadscope here too: the corpus test's module fixture (23 optimize runs) was built by both workers at once.
test: $(STAMP)
	$(PARALLEL) --dist loadscope

# Everything but the slow end-to-end runs (marked e2e): the loop to run while working. loadscope keeps a
# module on one worker, so its module-scoped fixtures (trained models, optimized bundles) are built once.
test-fast: $(STAMP)
	$(PARALLEL) --dist loadscope -m "not e2e"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo-out .pytest_cache build src/*.egg-info
