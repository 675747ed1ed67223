# One-command entry points. Every target sets itself up first (a local .venv), so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

# Re-install only when the dependency list changes; `make setup` is a no-op otherwise.
# editable_mode=compat puts the checkout on sys.path (a .pth line) instead of setuptools' import hook, so our
# packages win over a same-named data folder in the working directory (e.g. ./shards/ holding tars), which the
# hook loses to as an implicit namespace package.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

demo: setup
	$(BIN)/python -m pipeline.demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) data runs reports shards/sample
