# The README's commands. Every target installs the locked environment first when it is missing
# or older than the lock file, and does nothing extra when it is current.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
INSTALLED := $(VENV)/.installed

.PHONY: help install test up bench lint format lock clean

help:
	@echo "make test     run the whole test suite (installs .venv on first use)"
	@echo "make up       Airflow on http://localhost:8080 with the embedded or configured PostgreSQL"
	@echo "make bench    benchmarks, JSON results in bench/results/ (BENCH=name to pick one)"
	@echo "make lint     ruff check and format check"
	@echo "make lock     re-resolve requirements.in into requirements.lock"
	@echo "make clean    remove .venv, local Airflow state and the embedded database"

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the locked environment into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	@$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	@$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

up: $(INSTALLED)
	$(BIN)/cart-recovery up

bench: $(INSTALLED)
	$(BIN)/cart-recovery bench $(BENCH)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: $(INSTALLED)
	$(BIN)/uv pip compile requirements.in --python $(BIN)/python --no-header -o requirements.lock

clean:
	-@test -x $(BIN)/cart-recovery && $(BIN)/cart-recovery db stop 2>/dev/null
	rm -rf $(VENV) .airflow .data dbt_project/target dbt_project/logs
