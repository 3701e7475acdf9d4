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

# The demo: LeNet-300-100 on MNIST pruned twice by 54% of each hidden layer (27% of the output
# layer) to Pm 21.3% (the paper's Figure 3/4 ticket size; the paper's 20% per level needs 7
# levels), 2 trials of 8,000 iterations per run (the unpruned network early-stops near 3-4K),
# a random-reinit control of the Pm 21% ticket, then the report: the ticket early-stops clearly
# earlier than the unpruned network and than its reinit control (README: measured numbers).
DEMO_PRUNING := --fc-fraction 0.54 --output-fraction 0.27
run: setup
	$(VENV)/bin/lth lottery --preset paper $(DEMO_PRUNING) --levels 2 --iterations 8000 --trials 2 --output-dir $(OUT)
	$(VENV)/bin/lth reinit --experiment $(OUT) --control reinit --levels 2 --runs 1
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
