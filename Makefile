# digitserve: `make serve` runs the service, `make test` runs the whole suite (both from a fresh clone).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install system-deps data serve test lint typecheck pytest bench evidence audit lint-infra train-cnn train-vit clean

help:
	@echo "make serve      install and serve the shipped models at http://127.0.0.1:8000"
	@echo "make test       install and run ruff, mypy and the whole pytest suite"
	@echo "make bench      load benchmark -> bench/results.md (and the README's performance block)"
	@echo "make evidence   re-measure every figure the README and docs quote (about 30 minutes, on an idle machine)"
	@echo "make audit      pip-audit of the installed dependencies"
	@echo "make train-cnn / train-vit   retrain the baselines (see README)"

$(STAMP): pyproject.toml setup.py src/digitserve/serving/grpc/proto/open_inference.proto
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive for real: Chromium for the browser tests, wrk for the benchmark,
# Prometheus and promtool for the dashboard, the alert rules and their unit tests; h2load
# (nghttp2-client) for the gRPC benchmark.
system-deps:
	@command -v chromium >/dev/null && command -v wrk >/dev/null && command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v h2load >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium wrk prometheus nghttp2-client; }

data: $(STAMP)
	$(BIN)/digitserve data fetch

serve: $(STAMP)
	$(BIN)/digitserve serve

lint: $(STAMP)
	$(BIN)/ruff check src training tests bench
	$(BIN)/ruff format --check src training tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Two parts: every test not marked `solo` spread over the cores (pytest-xdist; DIGITSERVE_TEST_WORKERS
# processes, default one per CPU), then the solo tests one at a time on an otherwise idle machine
# (their outcome depends on the CPU they get). The solo part runs whatever the first gave, unless
# it was interrupted (exit 2); smoke-trained models and ONNX exports are made once for both
# (tests/support/smoke.py, exports.py), in a folder made afresh for each run. BESIDE, when set,
# is a command run beside the first part (its output shown after it); the solo part waits for it.
pytest: $(STAMP) system-deps data
	@cache=$$(mktemp -d -t digitserve-tests.XXXXXX); trap 'rm -rf "$$cache"' EXIT; export DIGITSERVE_TEST_CACHE=$$cache; \
	beside=0; if [ -n '$(BESIDE)' ]; then ( $(BESIDE) ) > $$cache/beside.log 2>&1 & pid=$$!; fi; \
	$(BIN)/python -m pytest -m "not solo" -n $${DIGITSERVE_TEST_WORKERS:-$$(nproc)} --dist loadscope --no-loadscope-reorder; \
	parallel=$$?; \
	if [ -n "$${pid:-}" ]; then wait $$pid; beside=$$?; cat $$cache/beside.log; fi; \
	test $$parallel = 2 && exit 2; \
	$(BIN)/python -m pytest -m solo; solo=$$?; \
	test $$parallel = 0 && test $$solo = 0 && test $$beside = 0

# The type check (one core for ~30 s) and the audit (waiting on the network) run beside the tests'
# parallel part: the whole of `make test` is that much shorter, and the solo part still runs alone.
test: lint
	@$(MAKE) --no-print-directory pytest BESIDE="$(BIN)/mypy && $(BIN)/pip-audit --skip-editable --progress-spinner off"

lint-infra: $(STAMP)
	$(BIN)/cfn-lint infra/registry.yaml infra/service.yaml
	$(BIN)/hadolint Dockerfile

bench: $(STAMP) system-deps data
	$(BIN)/python bench/run.py

# Every published figure, re-measured into the committed results files the docs quote
# (tests/unit/test_published_figures.py checks the README against them). Needs an idle machine.
evidence: $(STAMP) system-deps data
	$(BIN)/python bench/run.py
	$(BIN)/python bench/shadow_cost.py
	$(BIN)/python bench/protocol_cost.py
	$(BIN)/python bench/grpc_cost.py
	$(BIN)/python bench/feedback_cost.py --rounds 2 --seconds 6
	$(BIN)/python bench/observability_cost.py --rounds 4 --seconds 8
	$(BIN)/python bench/photo_burst.py --rounds 3 --bursts 5 --baseline 2a89a6c
	$(BIN)/python bench/worker_placement.py --rounds 5
	$(BIN)/python bench/decode_prices.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/cpu_budget.py
	rm -f bench/overload_results.json
	DIGITSERVE_EVIDENCE=bench/overload_results.json DIGITSERVE_OVERLOAD_SECONDS=12 $(BIN)/python -m pytest -q -p no:cacheprovider tests/integration/test_overload.py
	rm -f bench/shutdown_results.json
	DIGITSERVE_EVIDENCE=bench/shutdown_results.json DIGITSERVE_SHUTDOWN_RUNS=20 $(BIN)/python -m pytest -q -p no:cacheprovider tests/hostile/test_round_two.py -k shutdown
	rm -f bench/preprocess_results.json
	$(BIN)/python bench/preprocess_accuracy.py --seed 0 --out bench/preprocess_results.json
	$(BIN)/python bench/preprocess_accuracy.py --seed 1 --out bench/preprocess_results.json

audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable --progress-spinner off

train-cnn: $(STAMP) data
	$(BIN)/python training/train.py --arch cnn

train-vit: $(STAMP) data
	$(BIN)/python training/train.py --arch vit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
