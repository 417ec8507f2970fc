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
	$(PY) -m pip install -q -e '.[train,agent,video,fleet,federated,test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgewise quickstart --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the slow end-to-end runs (marked e2e): the loop to run while working.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo-out .pytest_cache build src/*.egg-info
