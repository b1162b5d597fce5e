"""BatchStore: every read and write batchdrain makes to its DynamoDB table.

Handlers speak the domain (create a header, seal, drain a chunk, close a shard,
complete); the conditions that make each step safe under retries and concurrency live
here, next to the write they guard.
"""

from __future__ import annotations

import random
import time
from typing import Any, Iterable, Mapping

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib import aws, model

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
# BatchWriteItem takes at most 25 puts per call.
BATCH_WRITE_ROWS = 25
_MAX_UNPROCESSED_ROUNDS = 12
_MAX_CONFLICT_ROUNDS = 5
# Errors kept per row: enough to diagnose, small enough that a row stays ~1 KB.
MAX_ROW_ERRORS = 5
# A poison message is kept for reading, not replay: the first 10 KB say what it was.
MAX_POISON_BODY = 10_000


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in values.items()}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values: numbers become int (all our numbers are integral), sets stay sets."""
    plain = {key: _deserializer.deserialize(value) for key, value in item.items()}
    return {key: _plain(value) for key, value in plain.items()}


def _plain(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return {_plain(member) for member in value}
    if isinstance(value, dict):
        return {key: _plain(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_plain(member) for member in value]
    return value


def _is_condition_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class BatchStore:
    """The batch table. `table_name` comes from Settings; the client from chalicelib.aws."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> Any:
        return self._client or aws.client("dynamodb")

    # -- headers -------------------------------------------------------------------

    def create_header(self, header: Mapping[str, Any]) -> bool:
        """Write a new CREATING header; False if the batch exists (duplicate cron delivery)."""
        item = {
            **model.header_key(header["batch_id"]),
            **header,
            "status": model.CREATING,
            "open_pk": model.OPEN_PK,
            "open_sk": f"{header['created_at']}#{header['batch_id']}",
        }
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def get_header(self, batch_id: str) -> dict[str, Any] | None:
        """The header, read strongly consistent (decisions are made on it)."""
        response = self.client.get_item(
            TableName=self.table_name, Key=to_item(model.header_key(batch_id)), ConsistentRead=True
        )
        return from_item(response["Item"]) if "Item" in response else None

    def checkpoint(self, batch_id: str, chunks_written: int) -> bool:
        """Record that chunks [0, chunks_written) have their rows and messages (resume point)."""
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET chunks_written = :n",
            ConditionExpression="#status = :creating",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item({":n": chunks_written, ":creating": model.CREATING}),
        ) is not None

    def seal(self, batch_id: str, open_shards: Iterable[int], sealed_at: str) -> bool:
        """CREATING -> SEALED, recording which shards hold chunk rows (invariant 2).

        Called only after every chunk row is written; the MODIFY it causes on the stream
        makes the finalizer check the batch even if every row was already deleted.
        """
        shards = sorted(set(open_shards))
        update = "SET #status = :sealed, sealed_at = :at"
        values: dict[str, Any] = {":sealed": model.SEALED, ":at": sealed_at, ":creating": model.CREATING}
        if shards:
            update += ", open_shards = :shards"
            values[":shards"] = set(shards)
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression=update,
            ConditionExpression="#status = :creating",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(values),
        ) is not None

    def close_shard(self, batch_id: str, shard: int) -> dict[str, Any] | None:
        """Remove an emptied shard from a sealed batch's open_shards; the header after, or None.

        Removing a set member is idempotent, so a redelivered stream record or a second
        finalizer doing the same is harmless. None when the batch is not SEALED (still
        CREATING: the seal will check again; already complete: nothing to do).
        """
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression="DELETE open_shards :shard",
            ConditionExpression="#status = :sealed",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item({":shard": {shard}, ":sealed": model.SEALED}),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def complete(self, batch_id: str, status: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """SEALED (no open shards) -> final status, once (invariant 4). The header if this call won."""
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":f{n}": value for n, value in enumerate(fields.values())}
        assignments = ", ".join(f"#f{n} = :f{n}" for n in range(len(fields)))
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression=f"SET #status = :final, {assignments}" if fields else "SET #status = :final",
            ConditionExpression="#status = :sealed AND attribute_not_exists(open_shards)",
            ExpressionAttributeNames={"#status": "status", **names},
            ExpressionAttributeValues=to_item({":final": status, ":sealed": model.SEALED, **values}),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def claim_notification(self, batch_id: str, now: int, lease_seconds: int) -> dict[str, Any] | None:
        """Take the right to publish a completed batch's alert for `lease_seconds`; the header, or None.

        The finalizer that completes a batch takes the lease in the completion write;
        the sweeper calls this only for completed, unnotified batches whose lease ran out
        (the winner died between completing and publishing).
        """
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET notify_lease_until = :until",
            ConditionExpression=(
                "#status IN (:done, :failed) AND attribute_not_exists(notified_at) "
                "AND (attribute_not_exists(notify_lease_until) OR notify_lease_until < :now)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {
                    ":until": now + lease_seconds,
                    ":now": now,
                    ":done": model.COMPLETED,
                    ":failed": model.COMPLETED_WITH_FAILURES,
                }
            ),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def open_batches(self) -> Iterable[dict[str, Any]]:
        """Headers of every batch not yet notified, oldest first (sparse GSI; eventually consistent)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": model.OPEN_INDEX,
            "KeyConditionExpression": "open_pk = :open",
            "ExpressionAttributeValues": to_item({":open": model.OPEN_PK}),
        }
        while True:
            page = self.client.query(**kwargs)
            yield from (from_item(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def begin_redrive(self, batch_id: str, attempt: int, started_at: str) -> dict[str, Any] | None:
        """COMPLETED_WITH_FAILURES (attempt n) -> CREATING (attempt n+1); the header, or None if not in that state."""
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression=(
                "SET #status = :creating, attempt = :next, redrive_started_at = :at, open_pk = :open, open_sk = :since "
                "REMOVE notified_at, alert_id, completed_at, notify_lease_until, sealed_at, succeeded, failed, sample_errors"
            ),
            ConditionExpression="#status = :failed AND attempt = :attempt",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {
                    ":creating": model.CREATING,
                    ":failed": model.COMPLETED_WITH_FAILURES,
                    ":attempt": attempt,
                    ":next": attempt + 1,
                    ":at": started_at,
                    ":open": model.OPEN_PK,
                    ":since": f"{started_at}#{batch_id}",
                }
            ),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def mark_notified(self, batch_id: str, notified_at: str, alert_id: str) -> bool:
        """Record that the alert went out; False if it was recorded already."""
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET notified_at = :at, alert_id = :alert REMOVE open_pk, open_sk, notify_lease_until",
            ConditionExpression="attribute_exists(pk) AND attribute_not_exists(notified_at)",
            ExpressionAttributeValues=to_item({":at": notified_at, ":alert": alert_id}),
        ) is not None

    def _update_if(self, key: Mapping[str, str], **update: Any) -> dict[str, Any] | None:
        """UpdateItem guarded by a condition; None when the condition failed (state moved on, or another writer won)."""
        try:
            return self.client.update_item(TableName=self.table_name, Key=to_item(key), **update)
        except ClientError as error:
            if _is_condition_failure(error):
                return None
            raise

    # -- chunk rows ----------------------------------------------------------------

    def put_chunks(self, chunks: Iterable[model.Chunk], expires_at: int) -> int:
        """Write chunk rows with BatchWriteItem, retrying UnprocessedItems with backoff."""
        requests = [
            {
                "PutRequest": {
                    "Item": to_item(
                        {
                            **model.chunk_key(chunk.batch_id, chunk.shard, chunk.chunk_no),
                            "pending": set(chunk.indices),
                            "expires_at": expires_at,
                        }
                    )
                }
            }
            for chunk in chunks
        ]
        for start in range(0, len(requests), BATCH_WRITE_ROWS):
            self._batch_write(requests[start : start + BATCH_WRITE_ROWS])
        return len(requests)

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending = {self.table_name: requests}
        for attempt in range(_MAX_UNPROCESSED_ROUNDS):
            response = self.client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            # Full jitter backoff, as AWS recommends for UnprocessedItems.
            time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
        left = len(pending.get(self.table_name, []))
        raise RuntimeError(f"BatchWriteItem left {left} rows unprocessed after {_MAX_UNPROCESSED_ROUNDS} rounds")

    def get_pending(self, batch_id: str, shard: int, chunk_no: int) -> set[int] | None:
        """The chunk's still-pending item indices; None if the row is gone (drained, or never written)."""
        row = self.get_chunk(batch_id, shard, chunk_no)
        return None if row is None else row["pending"]

    def get_chunk(self, batch_id: str, shard: int, chunk_no: int) -> dict[str, Any] | None:
        """The chunk row (pending, errors, attempts), read strongly consistent; None if gone."""
        response = self.client.get_item(
            TableName=self.table_name,
            Key=to_item(model.chunk_key(batch_id, shard, chunk_no)),
            ConsistentRead=True,
        )
        if "Item" not in response:
            return None
        row = from_item(response["Item"])
        row["pending"] = set(row.get("pending", set()))
        return row

    def drain(
        self,
        batch_id: str,
        shard: int,
        chunk_no: int,
        done: set[int],
        pending: set[int],
        errors: Mapping[int, str] | None = None,
    ) -> bool:
        """Mark `done` items finished and keep `errors` of the failed ones (invariant 5).

        Pending sets only ever shrink, so when `done` covers what was pending at read time
        the row can go at once (one write). Otherwise one update removes the done items,
        records the latest errors and counts the attempt; if a concurrent duplicate removed
        the rest, the set is now gone and so is the row's reason to exist.

        Returns whether this call recorded anything. False means the row was gone: drained
        by a duplicate delivery, or dead-lettered meanwhile, in which case its items stay
        counted as failed (a redrive runs them again).
        """
        if pending <= done:
            return self._delete_chunk(batch_id, shard, chunk_no)
        clauses, values = [], {}
        if done:
            clauses.append("DELETE pending :done")
            values[":done"] = done
        if errors:
            sample = dict(sorted(errors.items())[:MAX_ROW_ERRORS])
            clauses.append("SET errors = :errors ADD attempts :one")
            values.update({":errors": {str(index): text for index, text in sample.items()}, ":one": 1})
        if not clauses:
            return False
        response = self._update_if(
            model.chunk_key(batch_id, shard, chunk_no),
            UpdateExpression=" ".join(clauses),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues=to_item(values),
            ReturnValues="UPDATED_NEW" if done else "NONE",
        )
        if response is None:
            return False
        if done and "pending" not in response.get("Attributes", {}):
            # The set emptied (DynamoDB drops empty sets); a duplicate may have deleted the row already.
            self._delete_chunk(batch_id, shard, chunk_no)
        return True

    def _delete_chunk(self, batch_id: str, shard: int, chunk_no: int) -> bool:
        """Delete a chunk row if it still exists; False if it was gone (no write, no stream record)."""
        try:
            self.client.delete_item(
                TableName=self.table_name,
                Key=to_item(model.chunk_key(batch_id, shard, chunk_no)),
                ConditionExpression="attribute_exists(pk)",
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def fail_chunk(self, batch_id: str, shard: int, chunk_no: int, reason: str, failed_at: str) -> int | None:
        """Move a dead-lettered chunk's pending items into its F row and delete the chunk row, atomically.

        Returns how many items failed, or None if the chunk row was already gone (drained,
        or moved by an earlier delivery of the same dead letter: idempotent).
        """
        for _ in range(_MAX_CONFLICT_ROUNDS):
            row = self.get_chunk(batch_id, shard, chunk_no)
            if row is None:
                return None
            # Errors of items that later succeeded stay on the row (drain only rewrites them
            # when an attempt fails again); a failure report quotes only items that failed.
            errors = {key: text for key, text in (row.get("errors") or {}).items() if int(key) in row["pending"]}
            errors = errors or {str(index): reason for index in sorted(row["pending"])[:MAX_ROW_ERRORS]}
            failed_row = {
                **model.failed_key(batch_id, shard, chunk_no),
                "failed": row["pending"],
                "errors": errors,
                "attempts": row.get("attempts", 0),
                "reason": reason,
                "failed_at": failed_at,
            }
            try:
                self.client.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": self.table_name, "Item": to_item(failed_row)}},
                        {
                            "Delete": {
                                "TableName": self.table_name,
                                "Key": to_item(model.chunk_key(batch_id, shard, chunk_no)),
                                # Exactly what we read: a late processor may have drained items since.
                                "ConditionExpression": "pending = :pending",
                                "ExpressionAttributeValues": to_item({":pending": row["pending"]}),
                            }
                        },
                    ]
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                    continue  # the row changed or went; read it again
                raise
            return len(row["pending"])
        raise RuntimeError(f"chunk {batch_id}/{shard}/{chunk_no} kept changing while being dead-lettered")

    def failed_rows(self, batch_id: str, shards: int) -> list[dict[str, Any]]:
        """Every F row of the batch (items that exhausted their retries), across its shards."""
        rows = []
        for shard in range(shards):
            kwargs: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :failed)",
                "ExpressionAttributeValues": to_item(
                    {":pk": model.shard_pk(batch_id, shard), ":failed": model.FAILED_PREFIX}
                ),
                "ConsistentRead": True,
            }
            while True:
                page = self.client.query(**kwargs)
                for item in page["Items"]:
                    row = from_item(item)
                    row.update(shard=shard, chunk_no=int(row["sk"][len(model.FAILED_PREFIX) :]))
                    rows.append(row)
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return rows

    def chunk_rows(self, batch_id: str, shard: int) -> Iterable[dict[str, Any]]:
        """The chunk rows still in a shard (the sweeper's re-send list), strongly consistent."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :chunk)",
            "ExpressionAttributeValues": to_item({":pk": model.shard_pk(batch_id, shard), ":chunk": model.CHUNK_PREFIX}),
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page["Items"]:
                row = from_item(item)
                row.update(shard=shard, chunk_no=int(row["sk"][len(model.CHUNK_PREFIX) :]), pending=set(row["pending"]))
                yield row
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def restore_failed(self, batch_id: str, shard: int, chunk_no: int, failed: set[int], expires_at: int) -> bool:
        """Redrive: turn an F row back into a chunk row, atomically; False if it was restored already."""
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": to_item(
                                {**model.chunk_key(batch_id, shard, chunk_no), "pending": failed, "expires_at": expires_at}
                            ),
                        }
                    },
                    {
                        "Delete": {
                            "TableName": self.table_name,
                            "Key": to_item(model.failed_key(batch_id, shard, chunk_no)),
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise
        return True

    def put_poison(self, message_id: str, body: str, error: str, received_at: str, queue: str) -> bool:
        """Keep a message that is no batch's chunk, once per message id; False if kept already."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=to_item(
                    {
                        "pk": model.POISON_PK,
                        "sk": message_id,
                        "body": body[:MAX_POISON_BODY],
                        "error": error[:1000],
                        "received_at": received_at,
                        "queue": queue,
                    }
                ),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error_:
            if _is_condition_failure(error_):
                return False
            raise
        return True

    def shard_has_chunks(self, batch_id: str, shard: int) -> bool:
        """Whether any chunk row remains in the shard: strongly consistent Query, Limit=1 (invariant 3)."""
        response = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :chunk)",
            ExpressionAttributeValues=to_item({":pk": model.shard_pk(batch_id, shard), ":chunk": model.CHUNK_PREFIX}),
            ConsistentRead=True,
            Limit=1,
            ProjectionExpression="pk",
        )
        return bool(response.get("Items"))
