# cnnsuite front door. `make help` lists the targets.
SHELL := /bin/bash
# The first Python 3.11 or newer on PATH (torch 2.14 has wheels for 3.11-3.13); PYTHON=... picks another.
PYTHON ?= $(firstword $(foreach p,python3.11 python3.12 python3.13 python3,$(if $(shell command -v $(p) 2>/dev/null),$(p))))
VENV ?= .venv
BIN := $(VENV)/bin
TASKS := $(sort $(patsubst tasks/%/config.yaml,%,$(wildcard tasks/*/config.yaml)))
# Every task the installed suite has registered (tasks/ and a user's own task packages), without importing torch.
REGISTERED = $(BIN)/python -c 'from importlib.metadata import entry_points as e; print(*sorted(e(group="cnnsuite.tasks").names))'
TASK ?= recognition2d
ARGS ?=

.PHONY: help setup train prepare sweep evaluate predict export inspect serve test test-slow bench lint docs check-task need-ckpt

help:  ## list the targets
	@echo "make setup                               create $(VENV) and install cnnsuite (idempotent)"
	@echo "make train TASK=<task> [ARGS=\"...\"]       train on the task's default data, then evaluate best.ckpt"
	@echo "make train TASK=<task> RESUME=last|<ckpt>  resume the newest run (or a checkpoint) in its own folder"
	@echo "make prepare TASK=<task> OUT=<dir> [DATA=<dir>] [ARGS=\"...\"]   the task's data (DATA, else its default) as"
	@echo "                                         LitData shards in OUT; train from them: make train ARGS=\"--data.data_dir OUT\""
	@echo "make sweep TASK=<task> SPACE=<file> TRIALS=<n> [STUDY=<name>] [STORAGE=<url>] [ARGS=\"...\"]   an Optuna"
	@echo "                                         search (resumes its study): trials.md, plots, best_config.yaml"
	@echo "make evaluate CKPT=<file> [DATA=<dir>] [OUT=<dir>]   metrics.json, plots and report.md (DATA: the run's own folder,"
	@echo "                                         needed for a run on your own data; CKPT=\"a.ckpt b.ckpt\": comparison.md)"
	@echo "make predict CKPT=<file> INPUT=<file|dir> [OUT=<dir>]   predictions.jsonl and pictures for raw files"
	@echo "make export CKPT=<file> [FORMAT=onnx|torch-export] [OUT=<file>] [FORCE=1]   the network, its preprocessing as"
	@echo "                                         JSON (FORCE=1 overwrites the file OUT names)"
	@echo "make inspect CKPT=<file> [INPUT=<file>] [DATA=<dir>] [OUT=<dir>]   filters, feature maps, Grad-CAM, stage table"
	@echo "make serve CKPT=<file> [PORT=8000]      POST /predict (multipart field 'file') over HTTP"
	@echo "make test                                the test suite"
	@echo "make test-slow                           the tests that start real processes: kills, DDP"
	@echo "make bench [OUT=<dir>] [ARGS=--quick]    every task's model, training settings, data pipeline, training against references, cost as data grows: bench.md"
	@echo "make lint                                ruff"
	@echo "make docs                                docs/cli.md from the commands' own help; task READMEs' figures tables"
	@echo "tasks: $(TASKS) (and any an installed task package registers)"

check-task:
	@if [ ! -f tasks/$(TASK)/config.yaml ] && ! $(REGISTERED) 2>/dev/null | tr ' ' '\n' | grep -qxF -- '$(TASK)'; then \
		echo "unknown task '$(TASK)'; tasks: $$($(REGISTERED) 2>/dev/null || echo $(TASKS))" >&2; exit 2; fi

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null && $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "no Python 3.11 or newer found (PYTHON=$(PYTHON)); set PYTHON=..." >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

train: check-task setup
	$(BIN)/cnnsuite fit --task $(TASK) $(if $(RESUME),--ckpt_path "$(RESUME)") $(ARGS)

# The task's datamodule as its config builds it (ARGS: --data.KEY VALUE as for train), written once.
prepare: check-task setup
	@if [ -z "$(OUT)" ]; then echo "usage: make prepare TASK=<task> OUT=<dir> [DATA=<dir>] [ARGS=\"--data.KEY VALUE\"]" >&2; exit 2; fi
	$(BIN)/cnnsuite prepare --task $(TASK) $(if $(DATA),--data.data_dir "$(DATA)") --out "$(OUT)" $(ARGS)

sweep: check-task setup
	@if [ -z "$(SPACE)" ] || [ -z "$(TRIALS)" ]; then \
		echo "usage: make sweep TASK=<task> SPACE=space.yaml TRIALS=N [STUDY=name] [STORAGE=url] [ARGS=...]" >&2; exit 2; fi
	$(BIN)/cnnsuite sweep --task $(TASK) --space "$(SPACE)" --trials $(TRIALS) \
		$(if $(STUDY),--study $(STUDY)) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

need-ckpt:
	@if [ -z "$(CKPT)" ]; then echo "CKPT=path/to.ckpt is needed (a checkpoint written by make train)" >&2; exit 2; fi

# A checkpoint knows its task: TASK is not needed by the five targets below.
evaluate: need-ckpt setup
	$(BIN)/cnnsuite evaluate --ckpt $(CKPT) $(if $(DATA),--data.data_dir "$(DATA)") $(if $(OUT),--out "$(OUT)")

predict: need-ckpt setup
	@if [ -z "$(INPUT)" ]; then echo "usage: make predict CKPT=path/to.ckpt INPUT=file-or-folder [OUT=dir]" >&2; exit 2; fi
	$(BIN)/cnnsuite predict --ckpt "$(CKPT)" --input "$(INPUT)" $(if $(OUT),--out "$(OUT)")

export: need-ckpt setup
	$(BIN)/cnnsuite export --ckpt "$(CKPT)" $(if $(FORMAT),--format $(FORMAT)) $(if $(OUT),--out "$(OUT)") $(if $(filter 1,$(FORCE)),--force)

inspect: need-ckpt setup
	$(BIN)/cnnsuite inspect --ckpt "$(CKPT)" $(if $(INPUT),--input "$(INPUT)") $(if $(DATA),--data.data_dir "$(DATA)") $(if $(OUT),--out "$(OUT)")

serve: need-ckpt setup
	$(BIN)/cnnsuite serve --ckpt "$(CKPT)" --port $(or $(PORT),8000) $(ARGS)

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

# ARGS="--quick" (about 40 minutes on 2 cores), ARGS="--tasks video3d --sections models" ...
bench: setup
	$(BIN)/cnnsuite bench --out "$(or $(OUT),runs/bench)" $(ARGS)

docs: setup  ## docs/cli.md from the command table and each command's --help; each task README's figures table from benchmarks/results/figures.json
	$(BIN)/python -m cnnsuite.commands > docs/cli.md
	$(BIN)/python benchmarks/figures.py

lint: setup
	$(BIN)/ruff check .
