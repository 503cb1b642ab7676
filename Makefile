PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: install test test-fast reliability demo bench bench-setup bench-llm-setup lint format clean

# Creates .venv, installs Bastion with the dev/onnx/scale/models/scan/supply/ray/llm extras (torch pinned by
# constraints.txt) and onnx2torch with --no-deps (its torchvision dependency is only for the
# NMS/RoiAlign converters), and puts a `bastion` launcher on PATH (~/.local/bin or /usr/local/bin).
install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) -q -e ".[dev,onnx,scale,models,scan,supply,ray,llm]"
	$(BIN)/pip install -q --no-deps onnx2torch==1.5.15
	@./scripts/link-cli.sh $(BIN)/bastion
	@./scripts/install-system-deps.sh || echo "note: system packages not installed (not root?); Fashion-MNIST/chromium tests will skip"

# The whole suite, slow tests included (`make test-fast` skips those marked slow); starts the
# local PostgreSQL and Redis first when they are not running (their tests use the real servers).
test:
	@./scripts/start-services.sh
	$(BIN)/pytest -q --timeout=900

test-fast:
	$(BIN)/pytest -q -m "not slow" --timeout=600

# Bastion's own reliability and security suite, thoroughly (issue 14): schemathesis over the
# gateway, hypothesis over every parser (1000 examples), CLI bad input, kill -9 crash tests,
# audit durability, the malicious-model corpus; prints one table (docs/security.md).
reliability:
	$(BIN)/python scripts/reliability.py

demo:
	$(BIN)/bastion demo

# What every benchmark needs: the peers (ART, torchattacks, picklescan, ModelScan, modelaudit)
# and wrk (Debian), without running any benchmark.
bench-setup:
	$(PIP) -q -e ".[bench]"
	$(PIP) -q --no-deps torchattacks==3.5.1
	$(PIP) -q --no-deps modelscan==0.8.8 modelaudit==0.2.54 modelaudit-picklescan==0.1.12  # their declared deps pin rich<15 and pull cloud SDKs
	@./scripts/install-system-deps.sh --bench || echo "note: wrk not installed (not root?): bench_serve.py falls back to its httpx load generator"

# garak 0.17.1 for benchmarks/bench_llm.py, in its own .venv-garak: it needs openai<3 and
# transformers<5.20, which conflict with Bastion's venv. Only the torch pin (CPU wheel) applies.
bench-llm-setup:
	$(PY) -m venv .venv-garak
	.venv-garak/bin/pip install -q -c constraints.txt garak==0.17.1

bench: bench-setup
	$(BIN)/python benchmarks/bench_evasion.py

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) bastion-demo .pytest_cache
