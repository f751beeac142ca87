# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
QUICK ?=
CHECK_WORKERS ?= 2  # pytest-xdist workers for the in-process tiers (0: one process)

.PHONY: test test-heavy check lint bench bench-peers demo soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The tests train real PyTorch models: torch==2.13.0 is the CPU wheel these machines carry.
$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,torch,demo,keras,metrics,hf,lightning]'
	touch $@

# Every tier (tests/tiers.py: unit, sim, process, slow) but heavy training (what CI runs);
# the slowest tests listed at the end of each part. The in-process tiers (unit, sim) run on
# both cores; real daemons and sockets (process) one at a time, as their deadlines assume.
test: $(VENV)/.dev-installed
	$(PY) -m pytest -m "not heavy and not process" --durations=15 -n $(CHECK_WORKERS)
	$(PY) -m pytest -m "process and not heavy" --durations=15

# Real training runs and many-daemon swarms, minutes each (HPE's examples, the poisoning test).
test-heavy: $(VENV)/.dev-installed
	$(PY) -m pytest -m heavy --durations=10

# The fast tier, between edits: unit and simulator tests, no processes, no sockets, nothing slow.
# Seed sweeps run 5 seeds (make test: 20). Modules whose every test is deselected are not
# even imported (no TensorFlow, no torch). Two workers (pytest-xdist): these tests share no
# files, ports or processes, and both cores halve the wait (one: CHECK_WORKERS=0).
check: $(VENV)/.dev-installed
	$(PY) -m pytest -m "not process and not slow" --sim-seeds 5 -q --durations=10 -n $(CHECK_WORKERS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) tools/check_boundary.py

bench: $(VENV)/.dev-installed
	$(PY) bench/run_all.py $(if $(QUICK),--quick,) $(BENCHES)

# Flower and hivemind for bench/flower.py and bench/hivemind.py, in their own venv so .venv
# stays light. torch first: 2.13.0 is the CPU wheel on disk (any other pulls a CUDA build).
PEERS := .venv-peers
bench-peers: $(PEERS)/.installed
$(PEERS)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet torch==2.13.0
	$(PEERS)/bin/pip install --quiet 'flwr[simulation]==1.42.0' ray==2.55.1 hivemind==1.1.12
	$(PEERS)/bin/pip install --quiet -e . 'scikit-learn>=1.4'
	touch $@

# Long seed sweeps of every consensus scenario (SEEDS=first:end, default 0:1000 each).
SEEDS ?= 0:1000
soak: $(VENV)/.dev-installed
	for scenario in bft-calm bft-crashes bft-lossy bft-7-partitions bft-faults \
	    bft-equivocate bft-split-proposals bft-silent bft-sweep bft-skewed-clock \
	    bft-split-sweep gossip \
	    rounds-3 rounds-10 rounds-10-lossy rounds-kill rounds-partition rounds-byzantine ledger-gossip; do \
	  $(PY) -m swarmlearn.sim --scenario $$scenario --seeds $(SEEDS) || exit 1; \
	done
	# The ledger over gossip at full size: 200 validators and 1,000 followers (long: minutes).
	$(PY) -m swarmlearn.sim --scenario ledger-gossip --nodes 1200
	# A 50-node round with 5% loss on every link (issue 17): a minute a seed.
	$(PY) -m swarmlearn.sim --scenario rounds-50-lossy --seeds 0:20

# DEMO_ARGS, e.g. '--nodes 3 --rounds 5 --keep' (swarmlearn demo --help lists them all).
DEMO_ARGS ?=
demo: $(VENV)/.dev-installed
	$(VENV)/bin/swarmlearn demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
