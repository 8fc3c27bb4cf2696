# The two commands a newcomer needs:
#   make quick   set up, run examples/quick.yaml on this machine, print the report
#   make test    set up, run the whole test suite (what .ci/run runs)

VENV ?= .venv
PYTHON ?= python3
# torch goes in first and pinned, so pip takes the CPU build instead of a multi-GB CUDA one.
# Elsewhere, point TORCH_PIP_ARGS at PyTorch's CPU wheel index.
TORCH_SPEC ?= torch==2.13.*
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup quick test test-fast lint benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

quick: setup
	$(BIN)/farm submit --grid examples/quick.yaml
	$(BIN)/farm report --sweep quick

# The tests' own backends (tests/plugin) are installed the way a user's plugin would be,
# and the engines whose wheels are quick to install (llama.cpp builds from source: its
# tests run when `pip install -e '.[llama-cpp]'` was done by hand).
$(VENV)/.test-plugin: $(VENV)/.installed tests/plugin/pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps -e tests/plugin
	$(BIN)/python -m pip install --quiet -e '.[dev,ctranslate2,openvino]'
	touch $@

test: setup $(VENV)/.test-plugin
	$(BIN)/ruff check .
	$(BIN)/pytest

test-fast: setup $(VENV)/.test-plugin
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
