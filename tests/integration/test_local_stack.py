"""The local stack's own promises: Lambda's partial-batch rules, DynamoDB's write atomicity."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from batchdrain_local.pollers import failed_message_ids
from batchdrain_local.stack import stage_environment

IDS = ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "m2"}]}, {"m2"}),
        ({"batchItemFailures": [{"itemIdentifier": "nope"}]}, set(IDS)),  # unknown id: whole batch fails
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, set(IDS)),
        ({"batchItemFailures": [{"wrongKey": "m1"}]}, set(IDS)),
        ("not a dict", set(IDS)),
    ],
)
def test_partial_batch_responses_are_read_as_lambda_reads_them(response, failed):
    assert failed_message_ids(response, IDS) == failed


def test_stage_environment_is_top_level_then_stage():
    local = stage_environment("local")
    assert local["TABLE_NAME"] == "batchdrain-local"
    assert local["PROCESSOR_BATCH_SIZE"] == "10"
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stage_environment("nope")


def test_conditional_writes_have_exactly_one_winner_under_concurrency(start_stack):
    """DynamoDB applies writes to an item one at a time; moto needs the stack's lock for that."""
    stack = start_stack(count=100)
    table, clients = stack.resources.table_name, [stack.client("dynamodb") for _ in range(8)]
    winners_per_trial = []
    for trial in range(60):
        key = {"pk": {"S": f"race-{trial}"}, "sk": {"S": "META"}}
        clients[0].put_item(TableName=table, Item={**key, "status": {"S": "SEALED"}})
        wins, start = [], threading.Barrier(len(clients))

        def complete(client, key=key, wins=wins, start=start):
            start.wait()
            try:
                client.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET #s = :done",
                    ConditionExpression="#s = :sealed",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":done": {"S": "COMPLETED"}, ":sealed": {"S": "SEALED"}},
                )
                wins.append(client)
            except ClientError:
                pass

        threads = [threading.Thread(target=complete, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners_per_trial.append(len(wins))
    assert set(winners_per_trial) == {1}
