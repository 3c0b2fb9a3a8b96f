# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv (torch==2.13.0 CPU wheel first, so nothing pulls a multi-GB CUDA build),
# installs voxray with its TTS and dev extras, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.voxray-installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint demo bench clean train-demo-model web

setup: $(STAMP) web

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[tts,dev]"
	# Kokoro's torch model without its extras (misaki[en] would pull a CUDA torch and phonemizer-fork)
	$(BIN)/python -m pip install -q --no-deps kokoro==0.9.4
	touch $(STAMP)

test: lint web
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff, then the architecture: import-linter's contracts in pyproject.toml (layers, no Ray below the adapters)
lint: $(STAMP)
	$(BIN)/ruff check voxray tests benchmarks scripts
	$(BIN)/lint-imports

# The page (web/src -> voxray/web_static, bundled by esbuild from the lockfile's npm packages) and the
# node side of the Kokoro parity suite (onnxruntime-node); needs node + npm.
WEB_STAMP := web/node_modules/.voxray-npm-ci
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
	touch $(WEB_STAMP)

web: $(WEB_STAMP) voxray/web_static/app.js

voxray/web_static/app.js: $(WEB_STAMP) $(wildcard web/src/*) web/build.mjs
	cd web && node build.mjs

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/asr_throughput.py --quick --json out/bench/asr_throughput.json

# The shipped demo model's recipe (issue 8), ~75 CPU-minutes on an idle 2-core machine:
# 1. espeak-ng Korean corpus (~1 min) and CTC training from scratch on Ray Train (~35 min);
# 2. Kokoro-spoken Korean from the synthesis job (~15 min) and a second fine-tuning stage (~20 min);
# 3. export + model card. Every step resumes where it stopped.
train-demo-model: $(STAMP)
	$(BIN)/python scripts/make_ko_synthetic.py --out out/ko-synthetic-data --train 10000 --eval 400 --heldout 400
	$(BIN)/voxray -v run jobs/finetune.yaml
	$(BIN)/python scripts/make_ko_kokoro.py --data out/ko-synthetic-data --train 600 --eval 60
	$(BIN)/voxray -v run jobs/finetune-kokoro.yaml
	$(BIN)/python -m voxray.finetune.export out/ko-synthetic-ctc-kokoro models/ko-synthetic-ctc --sources espeak-ng,kokoro

clean:
	rm -rf $(VENV) out demo-out .pytest_cache
