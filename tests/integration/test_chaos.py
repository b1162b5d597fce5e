"""`make chaos` in small: randomized batches under every fault at once, checked against ground truth."""

from __future__ import annotations

import pytest

from batchdrain_local import chaos
from batchdrain_local.faults import FAULTS

BATCHES = 24


@pytest.fixture(scope="module")
def run() -> tuple[chaos.Figures, list[tuple[int, int]]]:
    """One run of BATCHES batches (about a minute and a half), shared by the tests below: its figures and its progress calls."""
    progress: list[tuple[int, int]] = []
    figures = chaos.run(batches=BATCHES, seed=20261123, progress=lambda ended, missed: progress.append((ended, missed)))
    return figures, progress


def test_randomized_batches_under_every_fault_end_with_one_right_alert_each(run):
    figures, progress = run

    injected = figures.injected
    assert set(injected) == set(FAULTS), f"faults that never struck: {set(FAULTS) - set(injected)}"
    assert set(figures.kinds) == set(chaos.KINDS), f"item kinds the run never had: {set(chaos.KINDS) - set(figures.kinds)}"
    redrives = injected["redrive"]
    assert (figures.alerts_expected, figures.alerts_received) == (BATCHES + redrives, BATCHES + redrives), figures.problems
    assert (figures.missed, figures.duplicate, figures.premature) == (0, 0, 0), figures.problems
    assert (figures.items_lost, figures.items_double_counted) == (0, 0), figures.problems
    assert (figures.items_misreported, figures.items_falsely_failed) == (0, 0), figures.problems
    assert figures.result_lines_wrong == 0, figures.problems
    assert progress == [(ended, 0) for ended in range(1, BATCHES + 1)], "every batch reports its end, once"


def test_object_source_batches_are_among_them_fanned_out_under_planner_faults_and_report_all_zeros(run):
    figures, _ = run

    objects = figures.sources.get(chaos.OBJECT, 0)
    assert objects >= 5 and figures.sources.get(chaos.RANDOM, 0) >= 5, figures.sources
    assert figures.segments > objects, "some object batches fanned out over several segments"
    assert figures.faults_by_source[chaos.OBJECT] == dict.fromkeys(chaos.Figures.FAULTS, 0), figures.problems
    assert {"planner_crash_before_checkpoint", "planner_crash_before_send", "planner_crash_before_finish"} <= set(figures.injected)
    # The SQS faults strike the planning queue's poller too: planning messages delivered twice,
    # one after the other and to two planners at once.
    assert figures.details.get("sqs_duplicate: plan_segments", 0) > 0, figures.details
    assert figures.details.get("sqs_concurrent_duplicate: plan_segments", 0) > 0, figures.details
    # The object batcher's crash before its planning messages, and a seal from the finalizer.
    assert figures.details.get("batcher_crash_before_send: from chalicelib.planning._write_segments", 0) > 0, figures.details
    assert figures.details.get("batcher_crash_before_seal: from chalicelib.planning", 0) > 0, figures.details


def test_replays_overlapping_sweeps_and_changed_objects_strike_where_they_are_meant_to_and_results_are_checked(run):
    figures, _ = run
    details = figures.details

    # Stream records handed to the finalizer again: windows from TRIM_HORIZON and from earlier positions,
    # and a redriven batch's segment REMOVEs, chunk REMOVEs and seal, as its new attempt is CREATING.
    assert details.get("stream_replay: records replayed from TRIM_HORIZON", 0) > 0, details
    assert details.get("stream_replay: records replayed from an earlier position", 0) > 0, details
    for kind in ("segment REMOVE", "chunk REMOVE", "seal MODIFY"):
        assert details.get(f"stream_replay_redrive: {kind}s replayed", 0) > 0, details
    # Two sweeps at once, and a stale sweep resuming a batch the batcher left unplanned after another sweep did.
    assert details.get("sweep_concurrent: second sweep ran", 0) > 0, details
    assert details.get("sweep_stale_resume: stale sweep ran", 0) > 0, details
    assert sum(count for case, count in details.items() if case.startswith("sweep_stale_resume: resumed after")) > 0
    # A redriven object's source overwritten first; a row update that dies after its results were written.
    assert figures.injected["object_overwritten_before_redrive"] > 0 and details.get("redrive: of a s3-jsonl batch", 0) > 0
    assert details.get("crash_before_row_update: after its results were written", 0) > 0, details
    # Batches with results, of both source types, read back through their manifests.
    assert figures.with_results >= BATCHES // 4, figures.with_results
    assert figures.kinds.get(chaos.ONCE_ONLY, 0) > 0
    # The planning queue's depth is sampled through the run (a queue that feeds itself would show in it).
    depth = figures.planning_queue_depth
    assert depth["samples"] > 10 and depth["max"] >= depth["median"] >= 0, depth
