# The two commands: `make run` (set up, run the main job) and `make test` (set up, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
LTH_DATA ?= $(abspath ../shared/data)
export LTH_DATA
OUT ?= runs/mnist_lenet_300_100

.PHONY: run test setup lint bench clean

setup: $(VENV)/.installed

# torch first: a bare `torch` requirement on a machine without it pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# A short lottery experiment on MNIST (2 trials, 3 pruning levels, 2,000 iterations per run),
# its random-reinitialization controls, then the report.
run: setup
	$(VENV)/bin/lth lottery --preset paper --levels 3 --iterations 2000 --trials 2 --output-dir $(OUT)
	$(VENV)/bin/lth reinit --experiment $(OUT) --control reinit --levels 0-3 --runs 1
	$(VENV)/bin/lth report $(OUT)

test: setup
	$(PY) -m pytest -q -n 2 --durations=10

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_parallel.py

clean:
	rm -rf $(VENV) runs
