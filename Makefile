# batchdrain: `make demo` and `make test` work on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
N ?= 1000
STAGE ?= dev
PACKAGE_DIR ?= out/$(STAGE)
# make deploy: optional alert subscription and table deletion protection (true/false).
ALERT_EMAIL ?=
TABLE_DELETION_PROTECTION ?=
# checkov lives in its own venv (inside .venv, so `make clean` removes it): see requirements-checkov.txt.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
# make bench: matplotlib for the plot, on top of the dev requirements (never installed by make test).
BENCH_STAMP := $(VENV)/.bench-stamp
BASELINE_MAX ?= 10000

.PHONY: setup demo test local package clean chaos bench bench-1m validate fuzz
.PHONY: deploy destroy check-templates policy

setup: $(STAMP)

# The pinned requirements, then this checkout itself, editable: the `batchdrain` command
# (pyproject.toml's [project.scripts]) runs the code as it is here, edits included.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# make demo: one cron batch of a definition end to end, its alert printed (docs/local-stack.md).
# DEFINITIONS=file DEFINITION=name run a definition as written; ITEMS= K= SCALE= override it,
# UPLOAD=file puts your own source data in the stack's S3, SAMPLE_DATA=1 adds sample data.
# SOURCE=s3: the S3 examples (examples/s3-digest.json) with sample data.
STACK_OPTIONS = $(if $(DEFINITIONS),--definitions $(DEFINITIONS)) $(if $(DEFINITION),--definition $(DEFINITION)) \
	$(if $(ITEMS),--items $(ITEMS)) $(if $(K),--k $(K)) $(if $(SCALE),--scale $(SCALE)) \
	$(foreach file,$(UPLOAD),--upload $(file)) $(if $(filter-out 0 no false,$(SAMPLE_DATA)),--sample-data) \
	$(if $(OBJECTS),--objects $(OBJECTS))
DEMO_OPTIONS = $(if $(filter s3,$(SOURCE)),--source s3) $(STACK_OPTIONS) $(if $(SEGMENT_BYTES),--segment-bytes $(SEGMENT_BYTES))
demo: $(STAMP)
	@$(BIN)/python -m batchdrain_local demo $(strip $(DEMO_OPTIONS))

# Four workers on CI's 2 cores: most integration time is waiting on pollers and timeouts, so
# extra workers fill the waits (the whole suite took 422 s with 4 workers, 489 s with 3, on this
# machine's 2 cores, unloaded); a file's tests stay on one worker, so module fixtures run once.
test: $(STAMP)
	$(BIN)/python -m pytest -n 4 --dist loadfile

# The API fuzzed long: EXAMPLES made-up requests per route (make test runs 40).
EXAMPLES ?= 3000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(EXAMPLES) $(BIN)/python -m pytest -p no:cacheprovider -q tests/unit/test_openapi.py -k made_up

chaos: $(STAMP)
	$(BIN)/python -m batchdrain_local.chaos --batches $(N) $(if $(SEED),--seed $(SEED))

# make local: the stack and chalice local until Ctrl-C (docs/local-stack.md). PORT= (8000),
# FIRE=name fires at start, CLOCK=N fires schedules N x faster; `batchdrain fire NAME` fires later.
LOCAL_OPTIONS = $(STACK_OPTIONS) $(if $(PORT),--port $(PORT)) $(if $(CLOCK),--clock-speed $(CLOCK)) $(foreach name,$(FIRE),--fire $(name))
local: $(STAMP)
	@$(BIN)/python -m batchdrain_local up $(strip $(LOCAL_OPTIONS))

# Your definitions file (DEFINITIONS=path; else batchdrain_definitions.json, else the shipped examples)
# and the stage's settings, checked as a deploy checks them: one line per problem, exit 1.
DEFINITIONS_ENV = $(if $(DEFINITIONS),BATCHDRAIN_DEFINITIONS=$(abspath $(DEFINITIONS)))
validate: $(STAMP)
	$(DEFINITIONS_ENV) $(BIN)/python -m batchdrain_cli validate --stage $(STAGE) $(VALIDATE_OPTIONS)

# Packaging reads nothing in S3: its check stays offline.
package: $(STAMP)
	@$(MAKE) --no-print-directory validate VALIDATE_OPTIONS=--offline
	$(DEFINITIONS_ENV) $(BIN)/python -m batchdrain_deploy package --stage $(STAGE) --out $(PACKAGE_DIR)

# Benchmarks on the local stack (README "Benchmarks"); never part of make test.
$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.harness --baseline-max $(BASELINE_MAX)

bench-1m: $(STAMP)
	$(BIN)/python -m bench.million

clean:
	rm -rf $(VENV) out .pytest_cache

$(CHECKOV_STAMP): requirements-checkov.txt | $(STAMP)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

check-templates: package $(CHECKOV_STAMP)
	$(BIN)/python -m batchdrain_deploy check --checkov $(CHECKOV_VENV)/bin/checkov infra/resources.yaml $(PACKAGE_DIR)/sam.json

deploy: $(STAMP)
	@$(MAKE) --no-print-directory validate
	$(DEFINITIONS_ENV) $(BIN)/python -m batchdrain_deploy deploy --stage $(STAGE) \
		$(if $(ALERT_EMAIL),--alert-email $(ALERT_EMAIL)) \
		$(if $(TABLE_DELETION_PROTECTION),--table-deletion-protection $(TABLE_DELETION_PROTECTION))

destroy: $(STAMP)
	$(BIN)/python -m batchdrain_deploy destroy --stage $(STAGE)

policy: $(STAMP)
	$(DEFINITIONS_ENV) $(BIN)/python -m batchdrain_deploy policy --stage $(STAGE)
