"""`make bench` at a tiny size, so the harness cannot rot: both systems, 200 items each.

The figures themselves are a benchmark's (bench/results/); here only their shape and
their arithmetic are checked: records complete, requests counted and positive, per-item
figures that multiply back to the counts, one alert per run.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import harness

ITEMS = 200
FIELDS = {"system", "items", "k", "wall_s", "items_per_s", "completion_latency_s", "requests", "usd_per_1m_items"}


@pytest.fixture(scope="module")
def document():
    return harness.run_all([ITEMS], baseline_max=ITEMS, progress=lambda line: None)


def runs_of(document, system):
    return [run for run in document["runs"] if run["system"] == system]


def test_each_system_runs_once_with_every_field_of_the_record(document):
    assert [run["system"] for run in document["runs"]] == ["baseline", "batchdrain"]
    for run in document["runs"]:
        assert FIELDS <= set(run), FIELDS - set(run)
        assert run["items"] == ITEMS
        assert run["alerts"] == 1
        assert run["alert_totals"]["items"] == ITEMS
        assert run["task_runs"] >= ITEMS
        assert run["wall_s"] > 0 and run["completion_latency_s"] is not None
        assert math.isclose(run["items_per_s"], ITEMS / run["wall_s"], rel_tol=0.02)
        assert run["usd_per_1m_items"] > 0
    assert document["speedup_vs_baseline"] is not None and document["speedup_at_items"] == ITEMS
    json.dumps(document)  # the document is what latest.json holds


def test_batchdrain_runs_the_k_it_chooses_itself_and_says_why_and_the_baseline_one_item_per_message(document):
    (batchdrain,) = runs_of(document, "batchdrain")
    (baseline,) = runs_of(document, "baseline")
    # The shipped definition leaves K to batchdrain: the run's K and its rule are the batch header's,
    # and they are what the sizing rules give for the stage's settings, worked out apart from the run.
    choice = harness.k_choice(ITEMS)
    assert choice.rule != "pinned"
    assert batchdrain["item_seconds"] == harness.BENCH_ITEM_SECONDS
    assert batchdrain["k"] == harness.deployed_k(ITEMS) == choice.k
    assert batchdrain["k_rule"] == choice.describe() and batchdrain["k_rule"].startswith(f"K={batchdrain['k']:,} (auto: ")
    assert batchdrain["chunks"] == math.ceil(ITEMS / batchdrain["k"])
    assert baseline["k"] == 1


def test_a_pinned_k_is_the_one_run_and_fits_the_processing_budget():
    # --k pins K; the declared item time is lowered only as far as the import's budget check needs.
    assert harness.deployed_k(ITEMS, k=20) == 20
    assert harness.bench_item_seconds(20) == harness.BENCH_ITEM_SECONDS
    large = 1_000
    assert harness.deployed_k(ITEMS, k=large) == large
    assert harness.bench_item_seconds(large) < harness.BENCH_ITEM_SECONDS


def test_counted_requests_are_positive_and_per_item_figures_multiply_back(document):
    for run in document["runs"]:
        requests = run["requests"]
        assert {"dynamodb", "sqs", "sns"} <= set(requests)
        counts = [n for operations in requests.values() for n in operations.values()]
        assert counts and all(n > 0 for n in counts)
        assert run["requests_total"] == sum(counts)
        for service, operations in requests.items():
            for operation, n in operations.items():
                assert math.isclose(run["requests_per_item"][service][operation] * ITEMS, n, abs_tol=0.01)
        pollers = run["lambda_poller_requests"]
        assert pollers["sqs"]["ReceiveMessage"] > 0 and pollers["sqs"]["DeleteMessageBatch"] > 0


def test_counts_match_each_design(document):
    (batchdrain,) = runs_of(document, "batchdrain")
    (baseline,) = runs_of(document, "baseline")
    chunks = batchdrain["chunks"]
    # batchdrain: one row and one message per chunk, one read and one delete to drain it; and one
    # planning message per segment (here one: 200 generated items).
    assert batchdrain["segments"] == 1
    assert batchdrain["entries"]["dynamodb:BatchWriteItem"] == chunks
    assert batchdrain["entries"]["sqs:SendMessageBatch"] == chunks + batchdrain["segments"]
    assert batchdrain["requests"]["dynamodb"]["DeleteItem"] == chunks
    # The origin design: one row, one message, one delete and one leftover Query per item (less
    # the REMOVEs its completing invocation skips).
    assert baseline["entries"]["dynamodb:BatchWriteItem"] == ITEMS
    assert baseline["entries"]["sqs:SendMessageBatch"] == ITEMS
    assert baseline["requests"]["dynamodb"]["DeleteItem"] == ITEMS
    assert 0 < baseline["requests"]["dynamodb"]["Query"] <= ITEMS + 1
    assert batchdrain["requests_total"] < baseline["requests_total"]
    assert batchdrain["usd_per_1m_items"] < baseline["usd_per_1m_items"]


def test_results_files_hold_the_document_and_a_row_per_run(document, tmp_path):
    written = harness.write_results(document, tmp_path, plot=False)
    assert {path.name for path in written} == {"latest.json", "latest.md"}
    assert json.loads((tmp_path / "latest.json").read_text()) == json.loads(json.dumps(document))
    table = (tmp_path / "latest.md").read_text()
    assert sum(line.startswith("| baseline |") or line.startswith("| batchdrain |") for line in table.splitlines()) == 2
