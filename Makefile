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

.PHONY: setup quick test test-fast lint clean engines docs results

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

# Generated documentation: the sweep-file reference from the validation models, and the
# results pages (and the README's headline) from the exports in docs/results/.
docs: setup
	$(BIN)/farm reference --out docs/sweep-file.md

results: setup
	$(BIN)/farm results docs/results --readme README.md

# The tests' own backends (tests/plugin) are installed the way a user's plugin would be,
# and the engines whose wheels are quick to install (llama.cpp builds from source: its
# tests run after `make engines`).
$(VENV)/.test-plugin: $(VENV)/.installed tests/plugin/pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps -e tests/plugin
	$(BIN)/python -m pip install --quiet -e '.[dev,ctranslate2,openvino]'
	touch $@

# Every engine of examples/engines.yaml. pip compiles llama.cpp (minutes) for this CPU, but
# without its AMX kernels: on AMX CPUs under a hypervisor they kill the process (SIGSEGV or
# SIGILL: only the main thread asks the kernel for AMX state; llama.cpp PR #26954). GCC
# keeps an explicit -mno-* over what -march=native turns on. LLAMA_CMAKE_ARGS= builds AMX in.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
engines: setup
	$(BIN)/python -m pip install --quiet -e '.[ctranslate2,openvino]'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps 'llama-cpp-python>=0.3'
	$(BIN)/python -m pip install --quiet -e '.[llama-cpp]'

test: setup $(VENV)/.test-plugin
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

test-fast: setup $(VENV)/.test-plugin
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
