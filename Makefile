# Entry points (`make help` lists them). Each target creates .venv and installs the project on first use.
#   make distill PRESET=smoke RUN=demo CONFIG=KD_IG student.epochs=3   (key=value words become config overrides)
# Vocabulary, the same as the CLIs: RUN = --run (a run name, runs/<name>, or a folder path), CONFIG = --configuration
# (KD_IG, ...), CONFIG_FILE = --config-file (a YAML file), RESUME=0 = --fresh, OUT = a study's --out.
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 / torchvision 0.29.1 are the pair that installs (from local disk) on the project's machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PRESET ?= cpu
RUN ?=
CONFIG ?=
CONFIG_FILE ?=
RESUME ?= 1
ARGS ?=
MAX_DROP ?=
QAT ?= auto
QAT_EPOCHS ?= 3
ALLOW_BUDGET_MISS ?=
OUT ?=
CONFIRM ?=
TARGETS ?=
BUDGET_MS ?=
CANDIDATES ?=
DEVICE_TIMINGS ?=
CANDIDATES_ONLY ?=
# Command-line words such as student.epochs=3 are config overrides, not make variables of ours.
OVERRIDES := $(filter-out PRESET=% RUN=% CONFIG=% CONFIG_FILE=% RESUME=% ARGS=% VENV=% PYTHON_BOOT=% TORCH_SPEC=% STUDY=% SCALE=% MAX_DROP=% ALLOW_BUDGET_MISS=% OUT=% CONFIRM=% QAT=% QAT_EPOCHS=% TARGETS=% BUDGET_MS=% CANDIDATES=% DEVICE_TIMINGS=% CANDIDATES_ONLY=%,$(MAKEOVERRIDES))
# Without RUN=, distill and teacher write runs/<preset>-<configuration> (the CLI's rule); export and bench-edge need RUN=.
RUN_ARG = $(if $(RUN),--run $(RUN))

.DEFAULT_GOAL := help
.PHONY: help install test test-fast distill teacher export compress bench-edge setup-aarch64 bench-pipeline ablation montecarlo sweep generalize clean

help:
	@echo "make install        create .venv, install torch + this project (first use of any target does it too)"
	@echo "make test           the whole test suite, about 5 min on a quiet 2-core machine (test-fast: about 75 s)"
	@echo "make distill        teacher -> IG maps -> student -> baseline into runs/RUN (default runs/<preset>-<configuration>);"
	@echo "                    PRESET=smoke (< 2 min) | cpu (default, about 35 min on 2 cores) | paper (GPU) | folder;"
	@echo "                    CONFIG=KD_IG etc. (--configuration), CONFIG_FILE=x.yaml (--config-file), key=value overrides,"
	@echo "                    RESUME=0 starts over (the old folder is moved aside to runs/RUN.old-<time>, not deleted)"
	@echo "make teacher        only the teacher stage of distill (same variables)"
	@echo "make export RUN=x   ONNX fp32 + int8 with parity checks into runs/x/export/ (RUN= required: name or folder)"
	@echo "     MAX_DROP=0.5 (validation points), QAT=auto (default: quantization-aware distillation when PTQ + fallback misses the budget) | 1 (always) | 0"
	@echo "     then the other runtimes' artifacts (python -m deploy.targets): ORT format always, OpenVINO / ExecuTorch when"
	@echo "     their extra is installed (pip install -e '.[openvino,executorch]'); TARGETS=ort,openvino picks some"
	@echo "make compress RUN=x BUDGET_MS=5  the most accurate student within a batch-1 p50 latency budget: candidates ->"
	@echo "                    timing -> proxy -> final distillation -> export + bench -> runs/x/compress/report.md;"
	@echo "                    CANDIDATES=a,b,c DEVICE_TIMINGS=file.json (deploy.time_candidates on the board) CANDIDATES_ONLY=1"
	@echo "make bench-edge RUN=x  latency, memory + accuracy of every artifact on every installed runtime, Pareto view,"
	@echo "                    into runs/x/bench/ (RUN= required; ARGS=--aarch64)"
	@echo "make setup-aarch64  once: qemu + arm64 Python + onnxruntime under .aarch64/ for bench-edge ARGS=--aarch64"
	@echo "make bench-pipeline training and IG speed, our way against the reference way (DISTILL_RUN=runs/<name>:"
	@echo "                    also that finished make distill run's wall time against the 25-minute aim)"
	@echo "make ablation|montecarlo|sweep|generalize SCALE=smoke|cpu|paper  the paper's studies into"
	@echo "                    runs/studies/<study>-<scale> (OUT=reports/<study>-<scale> rewrites a committed report)"
	@echo "make clean          lists the run folders (runs/*/) it would delete; make clean CONFIRM=1 deletes them"
	@echo "Variables: PRESET RUN CONFIG CONFIG_FILE RESUME ARGS (extra CLI flags) SCALE OUT MAX_DROP ALLOW_BUDGET_MISS"
	@echo "           TARGETS BUDGET_MS CANDIDATES DEVICE_TIMINGS CANDIDATES_ONLY"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev,qat,openvino,executorch]'
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

distill: install
	$(PY) -m toolkit distill --preset $(PRESET) $(RUN_ARG) $(if $(CONFIG),--configuration $(CONFIG)) \
		$(if $(CONFIG_FILE),--config-file $(CONFIG_FILE)) $(if $(filter 0 no false,$(RESUME)),--fresh) $(ARGS) $(OVERRIDES)

teacher: install
	$(PY) -m toolkit distill --preset $(PRESET) $(RUN_ARG) $(if $(CONFIG),--configuration $(CONFIG)) \
		$(if $(CONFIG_FILE),--config-file $(CONFIG_FILE)) --stages teacher $(ARGS) $(OVERRIDES)

# An empty RUN reaches the CLI as --run '', which refuses it with the list of finished runs (exit 2).
export: install
	$(PY) -m deploy.export --run '$(RUN)' $(if $(MAX_DROP),--max-drop $(MAX_DROP)) \
		$(if $(filter 1 yes true,$(ALLOW_BUDGET_MISS)),--allow-budget-miss) \
		--qat $(if $(filter 1 yes true always,$(QAT)),always,$(if $(filter 0 no false off,$(QAT)),off,on-miss)) \
		--qat-epochs $(QAT_EPOCHS) $(ARGS)
	$(PY) -m deploy.targets --run '$(RUN)' $(if $(TARGETS),--only $(TARGETS))

# An empty RUN reaches the CLI as --run '', which refuses it with the list of finished runs (exit 2).
compress: install
	$(PY) -m toolkit.compress --run '$(RUN)' $(if $(BUDGET_MS),--budget-ms $(BUDGET_MS)) \
		$(if $(CANDIDATES),--candidates $(CANDIDATES)) $(if $(DEVICE_TIMINGS),--device-timings $(DEVICE_TIMINGS)) \
		$(if $(filter 1 yes true,$(CANDIDATES_ONLY)),--candidates-only) $(ARGS)

bench-edge: install
	$(PY) -m benchmarks.bench_edge --run '$(RUN)' $(ARGS)

setup-aarch64:
	bash benchmarks/aarch64/setup.sh

bench-pipeline: install
	$(PY) -m benchmarks.bench_pipeline $(if $(DISTILL_RUN),--distill-run $(DISTILL_RUN)) $(ARGS)

ablation montecarlo sweep generalize: install
	$(PY) -m toolkit experiment $@ --scale $(if $(SCALE),$(SCALE),cpu) $(if $(OUT),--out $(OUT)) $(ARGS)

# Deletes every run folder (runs/*/: runs, exports, benchmarks, studies) only with CONFIRM=1; otherwise lists them.
clean:
	@if [ "$(CONFIRM)" = 1 ]; then echo "rm -rf runs/*/ .pytest_cache"; rm -rf runs/*/ .pytest_cache; \
	else echo "make clean would delete: $$(ls -d runs/*/ .pytest_cache 2>/dev/null | tr '\n' ' ')"; \
	echo "nothing deleted; run 'make clean CONFIRM=1' to delete them"; fi
