# ltdet2: `make demo` and `make test` set up the environment on first use.
# VENV=/path/to/env uses an existing environment (torch / detectron2 found there are kept).
# Exact tested versions: constraints.txt (the set-up installs under it); pyproject.toml has ranges only.
VENV ?= .venv
PYTHON_VENV := $(VENV)/bin/python
READY := $(VENV)/.ltdet2-ready
DEMO_OUTPUT ?= output/demo
# torch build for a new environment: auto (CPU-only where no NVIDIA GPU is seen), cpu or cuda
TORCH ?= auto

.PHONY: setup test test-slurm lint format demo clean-venv

setup: $(READY)

# Re-checked (in place) when the dependencies, the pins or the set-up script change; a second run
# installs nothing new.
$(READY): pyproject.toml constraints.txt scripts/setup_env.sh
	@rm -f $(READY)
	@TORCH=$(TORCH) bash scripts/setup_env.sh $(VENV)

# lint first: a lint or format error fails `make test` (and CI)
test: lint
	$(PYTHON_VENV) -m pytest -q

# Against a real Slurm: starts a one-node Slurm on this machine (scripts/slurm_local.sh: root, Debian;
# installs slurm-wlm and munge on first use), runs tests/slurm, then stops the daemons it started.
test-slurm: $(READY)
	bash scripts/slurm_local.sh start
	LTDET2_TEST_SLURM=1 $(PYTHON_VENV) -m pytest -q -s tests/slurm; status=$$?; \
		bash scripts/slurm_local.sh stop; exit $$status

lint: $(READY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(READY)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Trains and evaluates projects/baseline.py in $(DEMO_OUTPUT). Run again where it finished, it trains nothing and says
# so, naming the outputs; an interrupted demo continues from its last checkpoint (--resume).
demo: $(READY)
	@if [ -f "$(DEMO_OUTPUT)/phase_done.json" ] && [ -f "$(DEMO_OUTPUT)/model_final.pth" ]; then \
		echo "make demo: already finished: $(DEMO_OUTPUT)/model_final.pth, $(DEMO_OUTPUT)/metrics.json," \
			"$(DEMO_OUTPUT)/inference/ (evaluation), $(DEMO_OUTPUT)/phase_done.json (results);" \
			"remove $(DEMO_OUTPUT) or set DEMO_OUTPUT to train again"; \
	else \
		set -x; $(PYTHON_VENV) scripts/lazyconfig_train_net.py --config-file projects/baseline.py --resume \
			train.output_dir=$(DEMO_OUTPUT); \
	fi

clean-venv:
	rm -rf .venv
