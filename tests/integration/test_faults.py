"""One test per injected fault: the pipeline, driven by the local stack's pollers and sweeper,
still ends every batch with exactly one alert whose totals are right.

Faults come from the same FaultInjector `make chaos` uses, here limited to a few strikes so
each test shows one protection at work: redelivery of what was not recorded, the row as
the only record of progress, and the sweeper for what no event will finish.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from batchdrain_local.faults import FaultInjector
from batchdrain_local.runtime import InvocationCrashed
from chalicelib import model
from tests.integration.support import RUNS

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
ITEMS = 500
# The sweeper every second (rate(5 minutes) x 300), with leases and the stuck-CREATING age cut to seconds.
FAST_SWEEPER = {"sweep_speed": 300, "extra_environment": {"NOTIFY_LEASE_SECONDS": "2", "STUCK_CREATING_SECONDS": "2"}}


def strikes(**limits: int) -> FaultInjector:
    """Each named fault at every opportunity, at most `limit` times."""
    return FaultInjector(seed=0, rates=dict.fromkeys(limits, 1.0), limits=limits)


def only_alert(stack, batch_id: str, timeout: float = 60.0) -> dict:
    """The batch's alert, after waiting long enough for a second one (a lease expiry, a late sweep) to show."""
    alert = stack.wait_for_alert(batch_id, timeout=timeout)
    time.sleep(3)
    assert len(stack.alerts_for(batch_id)) == 1
    return alert["message"]


def test_messages_processed_but_never_deleted_come_back_and_change_nothing(start_stack):
    """Also what a crash after the row delete, before the message delete, looks like to SQS."""
    faults = FaultInjector(seed=0, rates={"sqs_lost_delete": 1.0})
    stack = start_stack(count=ITEMS, items_per_message=50, faults=faults)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]
    alert = stack.wait_for_alert(batch_id, timeout=60)["message"]
    invocations_at_alert = stack.invoker.invocations["process_work"]

    time.sleep(7)  # past the 5 s visibility timeout: every message is delivered again

    assert stack.invoker.invocations["process_work"] > invocations_at_alert
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert set(RUNS.values()) == {1} and len(RUNS) == ITEMS  # a message whose row is gone runs nothing
    assert len(stack.alerts_for(batch_id)) == 1
    assert stack.header(batch_id)["status"] == model.COMPLETED


def test_a_crash_between_the_tasks_and_the_row_update_runs_those_items_again(start_stack):
    stack = start_stack(count=ITEMS, items_per_message=50, faults=strikes(crash_before_row_update=3))
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert stack.options.faults.injected["crash_before_row_update"] == 3
    assert alert["status"] == model.COMPLETED
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert len(RUNS) == ITEMS
    assert 3 * 50 <= sum(RUNS.values()) - ITEMS  # the crashed chunks' items ran again: nothing recorded them


def test_a_finalizer_that_dies_between_completion_and_publish_is_covered_by_the_sweeper(start_stack):
    stack = start_stack(count=ITEMS, items_per_message=50, faults=strikes(finalizer_crash_before_publish=1), **FAST_SWEEPER)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert stack.options.faults.injected["finalizer_crash_before_publish"] == 1
    assert stack.invoker.errors["finalize"] + stack.invoker.errors["sweep"] == 1  # whichever completed it died
    assert alert["alert_id"] == f"{batch_id}/1"
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert stack.header(batch_id)["notified_at"]


def test_an_sns_publish_failure_is_published_by_the_sweeper_after_the_lease(start_stack):
    stack = start_stack(count=ITEMS, items_per_message=50, faults=strikes(sns_failure=2), **FAST_SWEEPER)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert stack.options.faults.injected["sns_failure"] == 2  # the finalizer's publish, then the first sweep's
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}


@pytest.mark.parametrize("fault", ["batcher_crash_before_send", "batcher_crash_before_seal"])
def test_a_batcher_that_dies_is_resumed_by_the_sweeper_and_alerts_once(start_stack, fault: str):
    # K=10: 50 chunks, two groups of 25, so "before send" strikes with rows written and none announced.
    stack = start_stack(count=ITEMS, items_per_message=10, faults=strikes(**{fault: 1}), **FAST_SWEEPER)

    if fault == "batcher_crash_before_send":  # segment rows written, planning messages not sent
        with pytest.raises(InvocationCrashed):
            stack.fire_schedule("nightly", SLOT)
    else:  # the finalizer that seals on the segment's REMOVE dies first (its retries find it still to seal)
        stack.fire_schedule("nightly", SLOT)
    batch_id = model.batch_id_for("nightly", SLOT)

    alert = only_alert(stack, batch_id)

    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert len(RUNS) == ITEMS
    assert stack.options.faults.injected[fault] == 1


def test_a_whole_stream_batch_delivered_again_alerts_once(start_stack):
    stack = start_stack(count=ITEMS, items_per_message=50, faults=FaultInjector(seed=0, rates={"stream_redelivery": 1.0}))
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert stack.options.faults.injected["stream_redelivery"] >= 1
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}


def test_poison_items_end_dead_lettered_and_the_batch_completes_with_failures(start_stack):
    stack = start_stack(count=ITEMS, items_per_message=50, task_name="poison", visibility_timeout=1, max_receive_count=2)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS - 5, "failed": 5}
    assert [sample["item"] for sample in alert["sample_errors"]] == [0, 100, 200, 300, 400]  # lowest items first
    assert all("ValueError: item" in sample["error"] for sample in alert["sample_errors"])
    assert len(RUNS) == ITEMS - 5
