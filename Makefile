# The README's commands. Everything goes through a local virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo

.PHONY: demo test bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/pip install -q -e '.[test,web,video]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/calae demo --out $(DEMO_OUT)

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python -m benchmarks.run

bench-quick: $(VENV)/.test
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT)
