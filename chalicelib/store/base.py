"""What every row kind's store shares: the table and its client, item conversion, conditional writes, retries.

Conditional writes return None / False when their condition failed (the state moved on,
or another writer won): that is an answer, not an error. What AWS asks to retry
(transaction conflicts, unprocessed items) is retried here with full-jitter backoff.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any, Iterator, Mapping

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib import aws, model

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
# BatchWriteItem takes at most 25 puts per call.
BATCH_WRITE_ROWS = 25
MAX_UNPROCESSED_ROUNDS = 12
MAX_CONFLICT_ROUNDS = 8


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(_decimal(value)) for key, value in values.items()}


def _decimal(value: Any) -> Any:
    """boto3 refuses floats: each one as the Decimal of its shortest text (from_item turns it back)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {key: _decimal(member) for key, member in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decimal(member) for member in value]
    if isinstance(value, (set, frozenset)) and any(isinstance(member, float) for member in value):
        return {_decimal(member) for member in value}
    return value


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values: numbers become int (all our numbers are integral), sets stay sets."""
    plain = {key: _deserializer.deserialize(value) for key, value in item.items()}
    return {key: _plain(value) for key, value in plain.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return {_plain(member) for member in value}
    if isinstance(value, dict):
        return {key: _plain(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_plain(member) for member in value]
    return value


def back_off(round_: int) -> None:
    """Full jitter, as AWS recommends for conflicts and throttling: up to 20 ms, doubling, at most 1 s."""
    time.sleep(random.uniform(0, min(1.0, 0.02 * 2**round_)))


def is_condition_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def is_cancelled(error: ClientError) -> bool:
    """A TransactWriteItems whose condition failed or that met a conflict (`cancellation_reasons` say which)."""
    return error.response.get("Error", {}).get("Code") == "TransactionCanceledException"


def cancellation_reasons(error: ClientError) -> list[str]:
    """Why each item of a cancelled transaction failed ("ConditionalCheckFailed", "TransactionConflict", "None")."""
    return [str(reason.get("Code")) for reason in error.response.get("CancellationReasons", [])]


class Table:
    """The batch table. `table_name` comes from Settings; the client from chalicelib.aws.

    Every transaction goes through `_transact`, with its items built in the calling method:
    the IAM policy generator reads them there (batchdrain_deploy.policy.TRANSACTION_HELPER).
    """

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> Any:
        return self._client or aws.client("dynamodb")

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        """PutItem only if no row has this key; False if one has (a duplicate delivery, a resumed plan)."""
        try:
            self.client.put_item(TableName=self.table_name, Item=to_item(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def _update_if(self, key: Mapping[str, str], **update: Any) -> dict[str, Any] | None:
        """UpdateItem guarded by a condition; None when the condition failed (state moved on, or another writer won).

        An item inside a running transaction (the header, while a chunk's failures are
        counted) rejects plain writes with TransactionConflictException, which botocore
        does not retry: those are retried here, with backoff.
        """
        for conflict in range(MAX_CONFLICT_ROUNDS):
            if conflict:
                back_off(conflict)
            try:
                return self.client.update_item(TableName=self.table_name, Key=to_item(key), **update)
            except ClientError as error:
                if is_condition_failure(error):
                    return None
                if error.response.get("Error", {}).get("Code") != "TransactionConflictException":
                    raise
        raise RuntimeError(f"{key} stayed in conflicting transactions for {MAX_CONFLICT_ROUNDS} rounds")

    def _transact(self, items: list[dict[str, Any]], *, retry_conflicts: bool = False) -> bool:
        """One TransactWriteItems; False if it was cancelled by a failed condition.

        A transaction that met another one on an item (TransactionConflict: the header, while
        parallel segments finish or items fail) is retried with backoff if `retry_conflicts`,
        and is otherwise False too, for a caller that reads again and recomputes.
        """
        for conflict in range(MAX_CONFLICT_ROUNDS):
            if conflict:
                back_off(conflict)
            try:
                self.client.transact_write_items(TransactItems=items)
                return True
            except ClientError as error:
                if not is_cancelled(error):
                    raise
                reasons = cancellation_reasons(error)
                if not retry_conflicts or "ConditionalCheckFailed" in reasons or "TransactionConflict" not in reasons:
                    return False
        raise RuntimeError(f"a transaction of {len(items)} items stayed in conflict for {MAX_CONFLICT_ROUNDS} rounds")

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending = {self.table_name: requests}
        for attempt in range(MAX_UNPROCESSED_ROUNDS):
            response = self.client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            # Full jitter backoff, as AWS recommends for UnprocessedItems.
            time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
        left = len(pending.get(self.table_name, []))
        raise RuntimeError(f"BatchWriteItem left {left} rows unprocessed after {MAX_UNPROCESSED_ROUNDS} rounds")

    def _rows_after(
        self, batch_id: str, shard: int, prefix: str, after_chunk: int, limit: int | None, before_attempt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Rows of one kind (`prefix`) in a shard after chunk `after_chunk`'s row, page by page, at most `limit`.

        Key order is text order: an object source's chunk numbers have 8 to 12 digits, so
        the next row is the first key after `after_chunk`'s own key, not chunk `after_chunk + 1`'s
        (a space sorts below every digit).
        """
        low = prefix if after_chunk < 0 else f"{prefix}{after_chunk:08d} "
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": model.shard_pk(batch_id, shard), ":low": low, ":high": prefix + "~"},
            "ConsistentRead": True,
        }
        if limit is not None:
            kwargs["Limit"] = limit  # a page of what is needed, not 1 MB of rows (the filter may need more pages)
        if before_attempt is not None:
            kwargs["FilterExpression"] = "attribute_not_exists(attempt) OR attempt < :attempt"
            kwargs["ExpressionAttributeValues"][":attempt"] = before_attempt
        kwargs["ExpressionAttributeValues"] = to_item(kwargs["ExpressionAttributeValues"])
        yielded = 0
        while True:
            page = self.client.query(**kwargs)
            for item in page["Items"]:
                row = from_item(item)
                row.update(shard=shard, chunk_no=int(row["sk"][len(prefix) :]))
                yield row
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
