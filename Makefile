# relayd: `make run` runs the daemon on the embedded development default,
# `make test` runs lint and the whole test suite, as CI does.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test lint unit bench clean

$(VENV)/.installed: setup.cfg pyproject.toml examples/relayd-dialect-acme/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	$(BIN)/python -m pip install -q --no-deps -e examples/relayd-dialect-acme --config-settings editable_mode=compat
	touch $@

run: $(VENV)/.installed
	$(BIN)/twist --log-format=text relayd --config etc/relayd.dev.toml

lint: $(VENV)/.installed
	$(BIN)/ruff format --check relayd tests bench twisted
	$(BIN)/ruff check relayd tests bench twisted
	$(BIN)/mypy relayd tests

unit: $(VENV)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint unit

bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var _trial_temp .pytest_cache .hypothesis
