"""Bad input that used to slip through: work messages whose table keys DynamoDB would reject.

A message's batch_id, shard and chunk make the chunk row's key `B#<batch_id>#<shard>` /
`C#<chunk>`. DynamoDB rejects a partition key over 2,048 bytes and a sort key over
1,024 bytes (UTF-8) with a ValidationException; moto accepts them. Such a message
could never be processed or recorded as failed, so the dead-letter handler would retry
it forever. parse_message rejects it instead, and it is kept as a POISON row, whose
key (`POISON` / the SQS message id) is always small.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib import aws as aws_clients
from chalicelib import deadletters, model
from chalicelib.config import Settings
from chalicelib.errors import BadMessageError

from .conftest import DEAD_LETTER_QUEUE_NAME, MockedAws, sqs_event

# DynamoDB's limits on key attribute values, in UTF-8 bytes.
PARTITION_KEY_BYTES = 2048
SORT_KEY_BYTES = 1024


def body(batch_id: str = "nightly-2026-11-23T06:00Z", shard: int = 0, chunk: int = 3) -> str:
    message = {"v": 1, "batch_id": batch_id, "shard": shard, "chunk": chunk, "task": "sleep", "options": {}}
    return json.dumps({**message, "items": [[300, {}]]})


def batch_id_for_partition_key_bytes(size: int, character: str = "x") -> str:
    """A batch id that makes the shard-0 partition key `B#<id>#0` exactly `size` bytes."""
    return character * ((size - len("B##0")) // len(character.encode()))


# -- parse_message -------------------------------------------------------------------------------------


def test_a_partition_key_of_exactly_2048_bytes_is_accepted():
    batch_id = batch_id_for_partition_key_bytes(PARTITION_KEY_BYTES)
    assert len(model.shard_pk(batch_id, 0).encode()) == PARTITION_KEY_BYTES

    assert model.parse_message(body(batch_id)).batch_id == batch_id


@pytest.mark.parametrize("character", ["x", "é", "€"])
def test_a_batch_id_whose_partition_key_is_over_2048_bytes_is_a_bad_message(character: str):
    batch_id = batch_id_for_partition_key_bytes(PARTITION_KEY_BYTES + 3 * len(character.encode()), character)
    size = len(model.shard_pk(batch_id, 0).encode())

    with pytest.raises(BadMessageError) as caught:
        model.parse_message(body(batch_id))

    expected = f"partition key B#<batch_id>#<shard> is {size:,} bytes (UTF-8); DynamoDB allows at most 2,048"
    assert expected in str(caught.value)


def test_the_shard_counts_in_the_partition_key():
    batch_id = batch_id_for_partition_key_bytes(PARTITION_KEY_BYTES)

    with pytest.raises(BadMessageError, match="at most 2,048"):
        model.parse_message(body(batch_id, shard=10))


def test_a_chunk_number_whose_sort_key_is_over_1024_bytes_is_a_bad_message():
    chunk = 10 ** (SORT_KEY_BYTES - len("C#"))  # one digit more than fits

    with pytest.raises(BadMessageError) as caught:
        model.parse_message(body(chunk=chunk))

    assert f"sort key C#<chunk> is {SORT_KEY_BYTES + 1:,} bytes; DynamoDB allows at most 1,024" in str(caught.value)
    assert model.parse_message(body(chunk=chunk - 1)).chunk_no == chunk - 1  # 1,024 bytes exactly


@pytest.mark.parametrize(("field", "changes"), [("shard", {"shard": -1}), ("chunk", {"chunk": -2})])
def test_a_negative_shard_or_chunk_is_a_bad_message(field: str, changes: dict[str, int]):
    with pytest.raises(BadMessageError, match=f"message field '{field}' must be >= 0, got -"):
        model.parse_message(body(**changes))


# -- the dead-letter handler ------------------------------------------------------------------------------


def _key_values(value: Any) -> list[tuple[str, str]]:
    """Every pk/sk string attribute anywhere in a request's parameters."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("pk", "sk") and isinstance(inner, dict) and isinstance(inner.get("S"), str):
                found.append((key, inner["S"]))
            else:
                found.extend(_key_values(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(_key_values(inner))
    return found


@pytest.fixture
def dynamodb_key_limits(aws: MockedAws) -> None:
    """Make the app's DynamoDB client reject oversized keys as AWS does (moto accepts them)."""

    def validate(params: dict[str, Any], model: Any, **_: Any) -> None:
        query_values = params.get("ExpressionAttributeValues", {}).values()
        values = _key_values(params) + [("pk", value["S"]) for value in query_values if "S" in value]
        for attribute, text in values:
            limit = PARTITION_KEY_BYTES if attribute == "pk" else SORT_KEY_BYTES
            if len(text.encode()) > limit:
                message = f"One or more parameter values were invalid: key size over {limit} bytes"
                raise ClientError({"Error": {"Code": "ValidationException", "Message": message}}, model.name)

    aws_clients.session().events.register("before-parameter-build.dynamodb", validate)


def test_a_dead_letter_whose_key_dynamodb_would_reject_is_kept_as_poison_and_nothing_else_is_written(
    aws: MockedAws, settings: Settings, dynamodb_key_limits: None
):
    oversized = body(batch_id_for_partition_key_bytes(PARTITION_KEY_BYTES + 100))
    message = {
        "MessageId": "4d6b2c1e-dead-4e77-9a2b-000000000001",
        "Body": oversized,
        "Attributes": {"ApproximateReceiveCount": "5"},
    }

    result = deadletters.handle_sqs_event(sqs_event([message], DEAD_LETTER_QUEUE_NAME), settings)

    assert result == {"batchItemFailures": []}  # recorded, not retried forever
    (row,) = aws.rows()
    assert (row["pk"], row["sk"]) == (model.POISON_PK, message["MessageId"])
    assert "DynamoDB allows at most 2,048" in row["error"]
