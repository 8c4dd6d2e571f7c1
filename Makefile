# Two entry points: `make demo` (set up + run the DAG on the demo config) and `make test` (set up + run the tests).
# Both create .venv when it is missing and reinstall only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= all
# the `gpu` resource: the GPUs here, or with none one per core (the jobs then run side by side on the CPU)
GPUS ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "$$n" -gt 0 ] && echo $$n || nproc)
# the tests across the cores (pytest-xdist), one worker more than the cores (at most 4): most tests wait on
# subprocesses. A file's tests on one worker (loadfile): the SLURM tests share one cluster, started and stopped by their
# module; files go out longest first, in tests/conftest.py's order. (loadgroup would be finer, but pytest-xdist 3.8
# cannot group under pytest 9.2, whose Node.nodeid no longer reads the _nodeid it writes groups to.) The session
# fixtures are built once for all workers.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n + 1 < 4 ? n + 1 : 4 )))
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# jobs run `python -m captioner ...`: make sure that is the virtual environment's python
export PATH := $(BIN):$(PATH)

.PHONY: demo test setup check-java lint clean-demo

demo: setup check-java
	@python -m captioner estimate --cores $(if $(filter all,$(CORES)),$(shell nproc),$(CORES)) || true
	snakemake --cores $(CORES) --resources gpu=$(GPUS)
	snakemake --report results/demo/report.html

test: setup check-java lint
	python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "error: 'java' is not on PATH. pycocoevalcap's tokenizer and METEOR need a Java runtime (11 or 17):"; \
	  echo "       Debian/Ubuntu: sudo apt-get install default-jre-headless   macOS: brew install openjdk"; \
	  exit 1; }

# the Snakemake catalog's checks: formatting of the Snakefile and rule files, and the linter on each shipped config,
# side by side (each a Snakemake start; where a SLURM client is installed without a controller, each also waits 10 s
# for `scontrol`, which the SLURM plugin asks at start-up); -O keeps each config's output together
LINT_CONFIGS := config/config.yaml config/coco.yaml config/coco-released.yaml config/coco-clip.yaml
lint: setup
	snakefmt --check Snakefile workflow
	@$(MAKE) --no-print-directory -O -j $(words $(LINT_CONFIGS)) $(addprefix lint-config/,$(LINT_CONFIGS))

lint-config/%: setup
	snakemake --lint --configfile $*

clean-demo:
	rm -rf results/demo
