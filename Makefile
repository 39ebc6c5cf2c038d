# Entry points. Each target creates .venv and installs the project on first use.
#   make distill PRESET=smoke RUN=demo CONFIG=KD_IG student.epochs=3   (key=value words become config overrides)
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 / torchvision 0.29.1 are the pair that installs (from local disk) on the project's machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PRESET ?= cpu
RUN ?=
CONFIG ?=
RESUME ?= 1
ARGS ?=
MAX_DROP ?=
ALLOW_BUDGET_MISS ?=
# Command-line words such as student.epochs=3 are config overrides, not make variables of ours.
OVERRIDES := $(filter-out PRESET=% RUN=% CONFIG=% RESUME=% ARGS=% VENV=% PYTHON_BOOT=% TORCH_SPEC=% STUDY=% SCALE=% MAX_DROP=% ALLOW_BUDGET_MISS=%,$(MAKEOVERRIDES))
RUN_NAME = $(if $(RUN),$(RUN),$(PRESET))

.PHONY: install test test-fast distill teacher export bench-edge setup-aarch64 bench-pipeline ablation montecarlo sweep generalize clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

distill: install
	$(PY) -m toolkit distill --preset $(PRESET) --run $(RUN_NAME) $(if $(CONFIG),--configuration $(CONFIG)) \
		$(if $(filter 0 no false,$(RESUME)),--fresh) $(ARGS) $(OVERRIDES)

teacher: install
	$(PY) -m toolkit distill --preset $(PRESET) --run $(RUN_NAME) --stages teacher $(ARGS) $(OVERRIDES)

export: install
	$(PY) -m deploy.export --run runs/$(RUN_NAME) $(if $(MAX_DROP),--max-drop $(MAX_DROP)) \
		$(if $(filter 1 yes true,$(ALLOW_BUDGET_MISS)),--allow-budget-miss) $(ARGS)

bench-edge: install
	$(PY) -m benchmarks.bench_edge --run runs/$(RUN_NAME) $(ARGS)

setup-aarch64:
	bash benchmarks/aarch64/setup.sh

bench-pipeline: install
	$(PY) -m benchmarks.bench_pipeline $(ARGS)

ablation montecarlo sweep generalize: install
	$(PY) -m toolkit experiment $@ --scale $(if $(SCALE),$(SCALE),cpu) $(ARGS)

clean:
	rm -rf runs/*/ .pytest_cache
