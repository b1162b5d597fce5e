# batchdrain: `make demo` and `make test` work on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ITEMS ?= 10000
K ?= 100
STAGE ?= dev

.PHONY: setup demo test local package clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m batchdrain_local demo --items $(ITEMS) --k $(K)

test: $(STAMP)
	$(BIN)/python -m pytest

local: $(STAMP)
	$(BIN)/python -m batchdrain_local up $(if $(CLOCK),--clock-speed $(CLOCK))

package: $(STAMP)
	rm -rf out/$(STAGE)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage $(STAGE) --merge-template infra/event-sources.json out/$(STAGE)

clean:
	rm -rf $(VENV) out .pytest_cache
