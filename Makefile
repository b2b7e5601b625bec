# Quick start:  make up   (docker-compose: trains a quick model on first run, then serves it)
#               make test (creates .venv, installs everything, runs the whole test suite)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= quick
DATA ?= stanfordnlp/imdb
RUN ?= runs/$(PRESET)
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help up down install tools test test-fast train evaluate archive serve stop bench soak

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed  ## create .venv with the pinned dependencies

up:  ## build and start the service with docker-compose (first run trains the quick model)
	docker-compose up -d --build
	@echo "try: curl -X POST 127.0.0.1:8080/predictions/bert_sentiment -H 'Content-Type: text/plain' -d 'great movie'"

down:  ## stop the docker-compose stack
	docker-compose down

tools:  ## Debian packages the tests use (prometheus); installs them when run as root
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	  || echo "prometheus is not installed: its test will skip"

test: install tools  ## the whole test suite (TorchServe, Prometheus and Docker tests included)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  ## unit tests only: no TorchServe, no Docker
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -m "not serve and not docker" $(PYTEST_ARGS)

train: install  ## fine-tune: make train PRESET=quick|full DATA=hub-name-or-parquet-dir
	$(PY) -m training --preset $(PRESET) --data $(DATA) --output-dir $(RUN)

evaluate: install  ## score a run: make evaluate RUN=runs/quick SPLIT=validation
	$(PY) -m training.evaluate --model $(RUN) --split $(or $(SPLIT),validation)

archive: install  ## package RUN into model_store/bert_sentiment.mar
	$(PY) -m training.archive $(RUN)

serve: install  ## start TorchServe natively on model_store/ (127.0.0.1:8080/8081/8082)
	@test -f model_store/bert_sentiment.mar || { echo "no model_store/bert_sentiment.mar: run make train archive first"; exit 1; }
	PATH=$(abspath $(VENV))/bin:$$PATH torchserve --start --ncs --disable-token-auth \
	  --ts-config serving/config.properties --model-store model_store

stop:  ## stop the native TorchServe
	PATH=$(abspath $(VENV))/bin:$$PATH torchserve --stop

.PHONY: faults
soak: install  ## soak test, 10 min at 80% of capacity on a private TorchServe: make soak [SOAK_ARGS="--duration 120"]
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.soak --store model_store $(SOAK_ARGS)

faults: install  ## fault injection (full queue, hung and killed worker, bad archives) on the tiny model
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests/test_faults.py -s -q $(PYTEST_ARGS)

IMDB_DATA_DIR ?= ../shared/data/imdb
bench: install  ## benchmark: seed baseline vs in-process limit vs TorchServe configs (~15 min; BENCH_ARGS=--quick)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m benchmarks.run --run $(RUN) --data $(IMDB_DATA_DIR) $(BENCH_ARGS)
