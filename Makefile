# cnnsuite front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TASKS := $(sort $(patsubst tasks/%/config.yaml,%,$(wildcard tasks/*/config.yaml)))
TASK ?= recognition2d
ARGS ?=

.PHONY: help setup train evaluate test test-slow bench lint check-task

help:  ## list the targets
	@echo "make setup                               create $(VENV) and install cnnsuite (idempotent)"
	@echo "make train TASK=<task> [ARGS=\"...\"]       train on the task's default data, then evaluate best.ckpt"
	@echo "make train TASK=<task> RESUME=last|<ckpt>  resume the newest run (or a checkpoint) in its own folder"
	@echo "make evaluate TASK=<task> CKPT=<file> [OUT=<dir>]   metrics.json, plots and report.md"
	@echo "make test                                the test suite"
	@echo "make test-slow                           the tests that start real processes: kills, DDP"
	@echo "make bench                               Lightning + task module against a plain PyTorch loop (ratios)"
	@echo "make lint                                ruff"
	@echo "tasks: $(TASKS)"

check-task:
	@if [ ! -f tasks/$(TASK)/config.yaml ]; then \
		echo "unknown task '$(TASK)'; tasks: $(TASKS)" >&2; exit 2; fi

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=..." >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

train: check-task setup
	$(BIN)/cnnsuite fit --config tasks/$(TASK)/config.yaml $(if $(RESUME),--ckpt_path $(RESUME)) $(ARGS)

evaluate: check-task setup
	@if [ -z "$(CKPT)" ]; then echo "usage: make evaluate TASK=$(TASK) CKPT=path/to.ckpt [OUT=dir]" >&2; exit 2; fi
	$(BIN)/cnnsuite evaluate --ckpt $(CKPT) $(if $(OUT),--out $(OUT))

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/trainer_overhead.py --task recognition2d
	$(BIN)/python benchmarks/trainer_overhead.py --task biomedical3d

lint: setup
	$(BIN)/ruff check .
