"""`make demo`: the README's first command, and a user's own definition run as written; run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess

from batchdrain_local.stack import PROJECT_DIR

# Commands docs/local-stack.md shows, run here as written (tests/unit/test_docs_local_stack.py checks the page).
MAKE_DEMO = "make demo"
DEMO_AS_WRITTEN = "make demo DEFINITIONS=docs/local-stack/visits.json UPLOAD=docs/local-stack/visits.jsonl"
DEMO_OVERRIDES = "make demo DEFINITIONS=docs/local-stack/visits.json DEFINITION=hourly-sample ITEMS=200 K=20"
DEMO_REFUSED = "make demo DEFINITIONS=docs/local-stack/visits.json DEFINITION=hourly-sample K=0"
DOCUMENTED = [MAKE_DEMO, DEMO_AS_WRITTEN, DEMO_OVERRIDES, DEMO_REFUSED]


def user_environment() -> dict[str, str]:
    """This environment without make's own variables: under `make test`, a make run here would call itself make[2]."""
    return {name: value for name, value in os.environ.items() if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def make(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command.split(), cwd=PROJECT_DIR, env=user_environment(), capture_output=True, text=True, timeout=timeout)


def alert_message(out: str) -> dict:
    return json.loads(out.split("message:", 1)[1].split("\ns3://", 1)[0].split("\nbatch ", 1)[0])


def test_make_demo_runs_the_shipped_example_sped_up_to_one_alert_and_says_what_it_changed():
    result = make(MAKE_DEMO)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the shipped example, sped up for the local stack (your own definitions run as written):" in out
    assert "override: task_options.scale 1.0 -> 0.002" in out and "override: item_seconds 1.0 -> 0.002" in out
    assert "override: items_per_message" not in out
    assert re.search(r"^  K=\d+ \(auto: chunk row size; .* at item_seconds 0.002\)$", out, re.M)
    assert "completion alert received through SNS:" in out
    assert re.search(r"subject: +batch nightly-\S+ completed: 10,000 items in \d+ s", out)
    assert re.search(r"batch nightly-\S+: 10,000 items in [\d.]+ s \(wall time from cron event to alert\); alerts for this batch: 1$", out, re.M)
    message = alert_message(out)
    assert message["status"] == "COMPLETED"
    assert message["totals"] == {"items": 10000, "succeeded": 10000, "failed": 0}
    assert out.rstrip().splitlines()[-1].startswith("local stack stopped; demo took")


def test_a_users_definition_runs_as_written_on_the_users_own_file():
    result = make(DEMO_AS_WRITTEN)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "definitions: docs/local-stack/visits.json\n" in out and "override" not in out
    assert re.search(r"^upload: docs/local-stack/visits.jsonl -> s3://my-input/visits/\d{4}-\d\d-\d\d/visits.jsonl \(5,154 bytes\)$", out, re.M)
    assert re.search(r"firing cron batch 'count-visits' \(cron\(0 6 \* \* \? \*\)\) for \S+: s3-jsonl s3://my-input/visits/\S+, K=50, task noop", out)
    assert alert_message(out)["totals"] == {"items": 120, "succeeded": 120, "failed": 0}  # the user's 120 lines
    assert re.search(r"^  segments 1 \(SEGMENT_BYTES 64 MiB\), chunks 3 \(K 50\), shards 1$", out, re.M)
    assert "batchdrain-definitions-" not in out + result.stderr and "batchdrain-overrides-" not in out + result.stderr


def test_overrides_are_applied_only_when_given_and_printed():
    result = make(DEMO_OVERRIDES)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    lines = [line for line in out.splitlines() if line.startswith("override:")]
    assert lines == ["override: hourly-sample source.count 500 -> 200", "override: hourly-sample items_per_message 100 -> 20"]
    assert "firing cron batch 'hourly-sample' (rate(1 hour))" in out and "200 items, K=20, task sleep" in out
    assert alert_message(out)["totals"] == {"items": 200, "succeeded": 200, "failed": 0}
    assert re.search(r"^  segments 1 \(SEGMENT_BYTES 64 MiB\), chunks 10 \(K 20\), shards 1$", out, re.M)


def test_an_override_the_app_refuses_is_one_line_naming_the_users_file_and_nothing_starts():
    result = make(DEMO_REFUSED, timeout=60)

    assert result.returncode != 0
    assert result.stdout == ""
    error, trailer = result.stderr.splitlines()  # the one line, and make's own
    assert error == "error: docs/local-stack/visits.json with K=0: definitions[1].items_per_message: must be between 1 and 10,000, got 0"
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: demo\] Error 1", trailer)


# The README's own job, run as the README shows it (tests/unit/test_docs.py names this test for it).
README_OWN_JOB = "make demo DEFINITIONS=examples/visits/definitions.json UPLOAD=examples/visits/visits.jsonl"


def test_the_readmes_own_job_runs_as_written_and_names_each_failure_by_its_code_line_and_its_export_line():
    result = make(README_OWN_JOB)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "definitions: examples/visits/definitions.json\n" in out and "override" not in out
    assert re.search(r"^upload: examples/visits/visits.jsonl -> s3://my-input/visits/\S+/visits.jsonl \(8,622 bytes\)$", out, re.M)
    assert alert_message(out)["totals"] == {"items": 200, "succeeded": 198, "failed": 2}
    failures = [json.loads(line) for line in out.split("failures.jsonl (first 2 of 2 lines):\n", 1)[1].splitlines()[:2]]
    assert [(failure["line"], failure["error"]) for failure in failures] == [
        (7, "KeyError: 'page' (at examples/visits/tasks.py:8 in page_visit)"),
        (42, "KeyError: 'page' (at examples/visits/tasks.py:8 in page_visit)"),
    ]
    logged = [json.loads(line) for line in (out + result.stderr).splitlines() if '"item failed for good"' in line]
    assert sorted((line["item"], line["attempts"]) for line in logged) == [(247, 1), (1725, 1)]  # permanent: one attempt, logged once
    assert all("Traceback" in line["traceback"] for line in logged)
