"""The faults `make chaos` gained for issue 9, one focused test each, on the local stack.

As in test_faults.py: the FaultInjector `make chaos` uses, limited so one protection shows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from batchdrain_local.faults import FaultInjector
from chalicelib import model
from tests.integration.support import RUNS

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
ITEMS = 500


def only_alert(stack, batch_id: str, timeout: float = 60.0) -> dict:
    alert = stack.wait_for_alert(batch_id, timeout=timeout)
    time.sleep(3)  # long enough for a second alert (a late sweep, a redelivery) to show
    assert len(stack.alerts_for(batch_id)) == 1
    return alert["message"]


def test_a_chunk_row_left_behind_empty_by_a_lost_delete_is_removed_and_its_items_are_not_run_again(start_stack):
    faults = FaultInjector(seed=0, rates={"lost_delete_after_emptying": 1.0}, limits={"lost_delete_after_emptying": 3})
    stack = start_stack(count=ITEMS, items_per_message=50, faults=faults)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    assert faults.injected["lost_delete_after_emptying"] == 3
    assert sum(count for case, count in faults.details.items() if "not injected" not in case) == 3
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert stack.header(batch_id)["status"] == model.COMPLETED
    assert sorted(RUNS) == list(range(ITEMS)) and set(RUNS.values()) == {1}  # an emptied row has nothing to run


def test_every_batch_of_messages_delivered_to_two_invocations_at_once_still_alerts_once_with_right_totals(start_stack):
    # Every 7th item fails its first attempt, so both copies also race on rows still partly pending.
    faults = FaultInjector(seed=0, rates={"sqs_concurrent_duplicate": 1.0})
    stack = start_stack(count=ITEMS, items_per_message=50, task_name="flaky", faults=faults)
    batch_id = stack.fire_schedule("nightly", SLOT)["batch_id"]

    alert = only_alert(stack, batch_id)

    struck = faults.details["sqs_concurrent_duplicate: process_work"]  # the planning queue's polls are struck too
    assert struck >= 2 and stack.invoker.invocations["process_work"] >= 2 * struck  # every poll, two copies each
    assert alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert sorted(RUNS) == list(range(ITEMS))  # every item finished (some twice: tasks are at-least-once)
