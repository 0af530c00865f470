# digitserve: `make serve` runs the service, `make test` runs the whole suite (both from a fresh clone).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install system-deps data serve test lint typecheck pytest bench audit lint-infra train-cnn train-vit clean

help:
	@echo "make serve      install and serve the shipped models at http://127.0.0.1:8000"
	@echo "make test       install and run ruff, mypy and the whole pytest suite"
	@echo "make bench      load benchmark -> bench/results.md"
	@echo "make audit      pip-audit of the installed dependencies"
	@echo "make train-cnn / train-vit   retrain the baselines (see README)"

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive for real: Chromium for the browser tests, wrk for the benchmark.
system-deps:
	@command -v chromium >/dev/null && command -v wrk >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium wrk; }

data: $(STAMP)
	$(BIN)/digitserve data fetch

serve: $(STAMP)
	$(BIN)/digitserve serve

lint: $(STAMP)
	$(BIN)/ruff check src training tests bench
	$(BIN)/ruff format --check src training tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps data
	$(BIN)/python -m pytest

test: lint typecheck pytest audit

lint-infra: $(STAMP)
	$(BIN)/cfn-lint infra/registry.yaml infra/service.yaml
	$(BIN)/hadolint Dockerfile

bench: $(STAMP) system-deps data
	$(BIN)/python bench/run.py

audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable --progress-spinner off

train-cnn: $(STAMP) data
	$(BIN)/python training/train.py --arch cnn

train-vit: $(STAMP) data
	$(BIN)/python training/train.py --arch vit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
