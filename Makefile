# Two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

$(BIN)/casella-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install run test bench
install: $(BIN)/casella-installed

## Start the server with the dev profile: SQLite under ./var, ports 2525/2587/2465/1110/1995/1143/1993.
run: install
	$(BIN)/casella serve --dev

## The whole suite (SQLite and, when reachable, PostgreSQL), on two workers: each starts its own daemons.
test: install
	$(BIN)/pytest -q -p no:cacheprovider -n 2 $(PYTEST_ARGS)

## Benchmarks (figures and ratios; not part of the tests). One alone: .venv/bin/python bench/NAME.py
bench: install
	$(BIN)/python bench/store.py
	$(BIN)/python bench/smtp_ingest.py
	$(BIN)/python bench/pop3.py
	$(BIN)/python bench/imap.py
	$(BIN)/python bench/outbound.py
