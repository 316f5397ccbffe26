# Forewarn: the two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean help

help:
	@echo "make demo   - create .venv, train a C-MAPSS bundle, start broker+agent+replay (Ctrl-C stops)"
	@echo "make test   - run the whole test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - benchmarks, results in bench/results/"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,demo]'
	touch $(STAMP)

# The suite also needs the test tools and the optional MLflow extra (tested, not skipped).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[train,demo,test,mlflow]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/forewarn demo

test: $(TEST_STAMP)
	$(BIN)/ruff check edge trainer fleet tests bench
	$(BIN)/mypy edge trainer fleet
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules edge fleet tests

lint: $(TEST_STAMP)
	$(BIN)/ruff check edge trainer fleet tests bench
	$(BIN)/mypy edge trainer fleet

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) demo-state build *.egg-info
