"""BatchStore: every read and write batchdrain makes to its DynamoDB table.

Handlers speak the domain (create a header, seal, drain a chunk, close a shard,
complete); the conditions that make each step safe under retries and concurrency live
here, next to the write they guard.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib import aws, model
from chalicelib.chunks import ItemOutcome, Plan, Recorded, chunk_row, new_chunk_row, plan_record

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
# BatchWriteItem takes at most 25 puts per call.
BATCH_WRITE_ROWS = 25
_MAX_UNPROCESSED_ROUNDS = 12
_MAX_CONFLICT_ROUNDS = 8
# TransactWriteItems takes 100 actions: the header check and 99 segment rows.
SEGMENTS_PER_TRANSACTION = 99
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


def _back_off(round_: int) -> None:
    """Full jitter, as AWS recommends for conflicts and throttling: up to 20 ms, doubling, at most 1 s."""
    time.sleep(random.uniform(0, min(1.0, 0.02 * 2**round_)))


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

    def create_header(self, header: Mapping[str, Any], status: str = model.CREATING) -> bool:
        """Write a new header (CREATING, or FAILED for a run that cannot start); False if the batch exists."""
        item = {
            **model.header_key(header["batch_id"]),
            **header,
            "status": status,
            "open_pk": model.OPEN_PK,
            "open_sk": f"{header['created_at']}#{header['batch_id']}",
        }
        return self._put_new(item)

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        """PutItem only if no row has this key; False if one has (a duplicate delivery, a resumed plan)."""
        try:
            self.client.put_item(TableName=self.table_name, Item=to_item(item), ConditionExpression="attribute_not_exists(pk)")
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

    def seal(self, batch_id: str, attempt: int, open_shards: Iterable[int], sealed_at: str) -> bool:
        """CREATING -> SEALED, recording which shards hold chunk rows (invariant 2).

        Called only after every chunk row is written; the MODIFY it causes on the stream
        makes the finalizer check the batch even if every row was already deleted.
        """
        shards = sorted(set(open_shards))
        update = "SET #status = :sealed, sealed_at = :at"
        values: dict[str, Any] = {":sealed": model.SEALED, ":at": sealed_at}
        if shards:
            update += ", open_shards = :shards"
            values[":shards"] = set(shards)
        return self._update_header_in(
            batch_id, model.CREATING, attempt, update, values, "attribute_not_exists(unsent)"
        ) is not None

    def close_shard(self, batch_id: str, attempt: int, shard: int) -> dict[str, Any] | None:
        """Remove an emptied shard from a sealed batch's open_shards; the header after, or None.

        The caller saw the header SEALED at `attempt` before it found the shard empty, and
        no row is added to an attempt after its seal, so the condition (still SEALED at
        that attempt) makes "empty" final (invariant 11). Removing a set member is
        idempotent: a redelivered stream record or a second finalizer is harmless.
        """
        response = self._update_header_in(
            batch_id, model.SEALED, attempt, "DELETE open_shards :shard", {":shard": {shard}}, ReturnValues="ALL_NEW"
        )
        return from_item(response["Attributes"]) if response else None

    def complete(self, batch_id: str, attempt: int, status: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """SEALED (no open shards) -> final status, once (invariant 4). The header if this call won."""
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":f{n}": value for n, value in enumerate(fields.values())}
        assignments = ", ".join(f"#f{n} = :f{n}" for n in range(len(fields)))
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression=f"SET #status = :final, {assignments}" if fields else "SET #status = :final",
            ConditionExpression="#status = :sealed AND attempt = :attempt AND attribute_not_exists(open_shards)",
            ExpressionAttributeNames={"#status": "status", **names},
            ExpressionAttributeValues=to_item({":final": status, ":sealed": model.SEALED, ":attempt": attempt, **values}),
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
            UpdateExpression="SET notify_lease_until = :until ADD notify_tries :one",
            ConditionExpression=(
                "#status IN (:done, :failed, :failed_batch) AND attribute_not_exists(notified_at) "
                "AND (attribute_not_exists(notify_lease_until) OR notify_lease_until < :now)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {
                    ":until": now + lease_seconds,
                    ":one": 1,
                    ":now": now,
                    ":done": model.COMPLETED,
                    ":failed": model.COMPLETED_WITH_FAILURES,
                    ":failed_batch": model.FAILED,
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
                "REMOVE notified_at, alert_id, completed_at, notify_lease_until, sealed_at, succeeded, failed, sample_errors, "
                "failed_items, redrive_cursor, unsent, resend_cursor, resends, resent_at, notify_tries"
            ),
            # Only once the attempt's alert is out (invariant 11): a publish still in flight
            # would otherwise stamp the new attempt as notified.
            ConditionExpression="#status = :failed AND attempt = :attempt AND attribute_exists(notified_at)",
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

    def fail_batch(self, batch_id: str, attempt: int, reason: str, now: str, lease_until: int) -> dict[str, Any] | None:
        """CREATING -> FAILED (its source cannot be read), taking the notification lease; the header if this call won."""
        response = self._update_header_in(
            batch_id,
            model.CREATING,
            attempt,
            "SET #status = :failed_batch, reason = :reason, completed_at = :now, notify_lease_until = :until",
            {":failed_batch": model.FAILED, ":reason": reason, ":now": now, ":until": lease_until},
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def mark_planned(self, batch_id: str, attempt: int) -> bool:
        """Record that every segment row of a CREATING batch exists (its seal may now be detected)."""
        return self._update_header_in(batch_id, model.CREATING, attempt, "SET planned = :yes", {":yes": True}) is not None

    # -- segment rows (P#<n> in the header's partition) ---------------------------------

    def put_segments(self, batch_id: str, attempt: int, specs: Mapping[int, Mapping[str, Any]], sent_at: int) -> bool:
        """Write segment rows while the batch is CREATING at `attempt` and not yet planned; False once it is.

        Each group is one transaction with a check on the header, so once `planned` is set
        (and planning messages exist) no segment row can be written again: a sweep that
        re-plans late can never re-create a segment a planner already finished (invariant
        14). Before that no planner has touched a row, so writing one again is harmless.
        Rows record their `attempt` (a REMOVE seen on the stream proves which attempt it
        ended) and `sent_at` (when their planning message went out, for the sweeper).
        """
        numbers = sorted(specs)
        for start in range(0, len(numbers), SEGMENTS_PER_TRANSACTION):
            group = {number: specs[number] for number in numbers[start : start + SEGMENTS_PER_TRANSACTION]}
            if not self._put_segment_group(batch_id, attempt, group, sent_at):
                return False
        return True

    def _put_segment_group(self, batch_id: str, attempt: int, specs: Mapping[int, Mapping[str, Any]], sent_at: int) -> bool:
        transaction: list[dict[str, Any]] = [
            {
                "ConditionCheck": {
                    "TableName": self.table_name,
                    "Key": to_item(model.header_key(batch_id)),
                    "ConditionExpression": (
                        "#status = :creating AND attempt = :attempt AND (attribute_not_exists(planned) OR planned = :no)"
                    ),
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": to_item({":creating": model.CREATING, ":attempt": attempt, ":no": False}),
                }
            }
        ]
        for number, spec in specs.items():
            row = {**model.segment_key(batch_id, number), "spec": dict(spec), "chunks": 0, "items": 0, "attempt": attempt, "sent_at": sent_at}
            transaction.append({"Put": {"TableName": self.table_name, "Item": to_item(row)}})
        try:
            self.client.transact_write_items(TransactItems=transaction)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in reasons:
                return False  # planned by a rival, or the batch moved on
            raise RuntimeError(f"segment rows of {batch_id} not written: transaction cancelled ({reasons})") from None
        return True

    def segment_rows(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The segment rows still there (not yet expanded), strongly consistent, page by page."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :segment)",
            "ExpressionAttributeValues": to_item({":pk": f"B#{batch_id}", ":segment": model.SEGMENT_PREFIX}),
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page["Items"]:
                row = from_item(item)
                row["segment"] = int(row["sk"][len(model.SEGMENT_PREFIX) :])
                yield row
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def has_segments(self, batch_id: str) -> bool:
        """Whether any segment row is left (strongly consistent, Limit 1): the seal's drain check."""
        response = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :segment)",
            ExpressionAttributeValues=to_item({":pk": f"B#{batch_id}", ":segment": model.SEGMENT_PREFIX}),
            ConsistentRead=True,
            Limit=1,
            ProjectionExpression="pk",
        )
        return bool(response["Items"])

    def claim_segment(self, batch_id: str, segment: int, owner: str, now: int, lease_until: int) -> dict[str, Any] | None:
        """Take a segment for `owner` until `lease_until`; the row, or None if it is gone or someone holds it.

        SQS may hand one planning message to two planners at once: only the holder of
        the lease writes, so no row is ever written back after its items ran.
        """
        response = self._update_if(
            model.segment_key(batch_id, segment),
            UpdateExpression="SET #owner = :owner, lease_until = :until",
            ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues=to_item({":owner": owner, ":until": lease_until, ":now": now}),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def checkpoint_segment(
        self, batch_id: str, segment: int, owner: str, progress: Mapping[str, Any], unsent: list[list[int]]
    ) -> bool:
        """Move a held segment's checkpoint past a group whose rows are written, listing the group as unsent."""
        names = {f"#p{n}": name for n, name in enumerate(progress)}
        values = {f":p{n}": value for n, value in enumerate(progress.values())}
        assignments = ", ".join(f"#p{n} = :p{n}" for n in range(len(progress)))
        return self._update_held_segment(
            batch_id, segment, owner, f"SET {assignments}, unsent = :unsent", names, {":unsent": unsent, **values},
            "attribute_not_exists(unsent)",
        )

    def clear_segment_unsent(self, batch_id: str, segment: int, owner: str) -> bool:
        """Record that the listed group's messages went out."""
        return self._update_held_segment(batch_id, segment, owner, "REMOVE unsent")

    def release_segment(self, batch_id: str, segment: int, owner: str, sent_at: int) -> bool:
        """Give a segment back (its planner ran out of time, or failed); `sent_at`: when its next message goes out."""
        return self._update_held_segment(batch_id, segment, owner, "REMOVE #owner, lease_until SET sent_at = :sent", values={":sent": sent_at})

    def claim_resend(self, batch_id: str, segment: int, resends: int, now: int) -> bool:
        """Take the right to send an idle segment's planning message again; False if a rival took it or a planner holds it.

        Fenced on the row's re-send count, so any number of overlapping sweeps send one
        message per round, and the next round waits twice as long (see planner.resume).
        """
        return self._update_if(
            model.segment_key(batch_id, segment),
            UpdateExpression="SET resends = :next, sent_at = :now",
            ConditionExpression=(
                "attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until < :now) AND "
                + ("resends = :resends" if resends else "attribute_not_exists(resends)")
            ),
            ExpressionAttributeValues=to_item({":next": resends + 1, ":now": now, **({":resends": resends} if resends else {})}),
        ) is not None

    def _update_held_segment(
        self,
        batch_id: str,
        segment: int,
        owner: str,
        update: str,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        condition: str = "",
    ) -> bool:
        """Update a segment row only while `owner` holds it (and `condition`); False if it lost the lease."""
        return self._update_if(
            model.segment_key(batch_id, segment),
            UpdateExpression=update,
            ConditionExpression="#owner = :owner" + (f" AND {condition}" if condition else ""),
            ExpressionAttributeNames={"#owner": "owner", **(names or {})},
            ExpressionAttributeValues=to_item({":owner": owner, **(values or {})}),
        ) is not None

    def finish_segment(self, batch_id: str, attempt: int, segment: int, owner: str, chunks: int, items: int, now: str) -> bool:
        """Delete an expanded segment's row and add its totals to the header, in one transaction.

        Exactly once per segment (the delete is fenced on the owner), so the header's
        totals are exact; the REMOVE on the stream is what lets the finalizer seal.
        """
        transaction = [
            {
                "Delete": {
                    "TableName": self.table_name,
                    "Key": to_item(model.segment_key(batch_id, segment)),
                    "ConditionExpression": "#owner = :owner AND attribute_not_exists(unsent)",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": to_item({":owner": owner}),
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_item(model.header_key(batch_id)),
                    "UpdateExpression": "ADD total_items :items, total_chunks :chunks SET progress_at = :now",
                    "ConditionExpression": "#status = :creating AND attempt = :attempt",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": to_item(
                        {":items": items, ":chunks": chunks, ":now": now, ":creating": model.CREATING, ":attempt": attempt}
                    ),
                }
            },
        ]
        for conflict in range(_MAX_CONFLICT_ROUNDS):
            if conflict:
                _back_off(conflict)
            try:
                self.client.transact_write_items(TransactItems=transaction)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                # The header is busy (parallel segments finishing, items failing): try again.
                # A failed condition (lease lost, batch moved on) is final.
                reasons = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
                if "TransactionConflict" not in reasons or "ConditionalCheckFailed" in reasons:
                    return False
                continue
            return True
        raise RuntimeError(f"segment {segment} of {batch_id} stayed in conflicting transactions for {_MAX_CONFLICT_ROUNDS} rounds")

    def delete_segment(self, batch_id: str, segment: int) -> None:
        """Drop a segment row of a batch that failed (nothing will expand it)."""
        self.client.delete_item(TableName=self.table_name, Key=to_item(model.segment_key(batch_id, segment)))

    def mark_notified(self, batch_id: str, attempt: int, notified_at: str, alert_id: str) -> bool:
        """Record that attempt `attempt`'s alert went out; False if recorded already or the batch moved on."""
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET notified_at = :at, alert_id = :alert REMOVE open_pk, open_sk, notify_lease_until",
            ConditionExpression=(
                "attempt = :attempt AND #status IN (:done, :failed, :failed_batch) AND attribute_not_exists(notified_at)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {
                    ":at": notified_at,
                    ":alert": alert_id,
                    ":attempt": attempt,
                    ":done": model.COMPLETED,
                    ":failed": model.COMPLETED_WITH_FAILURES,
                    ":failed_batch": model.FAILED,
                }
            ),
        ) is not None

    def note_progress(self, batch_id: str, attempt: int, now: str) -> bool:
        """Stamp that a row of the sealed batch drained (the sweeper's sign of life); False if not SEALED at `attempt`."""
        return self._update_header_in(batch_id, model.SEALED, attempt, "SET progress_at = :now", {":now": now}) is not None

    def note_resend(self, batch_id: str, attempt: int, resends: int, now: str) -> bool:
        """Claim one re-send round of a stalled batch's messages (its cursor at the start); False if a rival took it.

        The round then goes page by page (`move_resend_cursor`), a page per sweep.
        """
        return self._update_header_in(
            batch_id,
            model.SEALED,
            attempt,
            "SET resent_at = :now, resends = :next, resend_cursor = :start",
            {":now": now, ":next": resends + 1, ":start": "", **({":resends": resends} if resends else {})},
            "resends = :resends" if resends else "attribute_not_exists(resends)",
        ) is not None

    def move_resend_cursor(self, batch_id: str, attempt: int, cursor: str, next_cursor: str | None) -> bool:
        """Claim the page of a re-send round that ends at `next_cursor` (None: the round's last page); False if a rival did."""
        update = "SET resend_cursor = :next" if next_cursor is not None else "REMOVE resend_cursor"
        values = {":cursor": cursor, **({":next": next_cursor} if next_cursor is not None else {})}
        return self._update_header_in(batch_id, model.SEALED, attempt, update, values, "resend_cursor = :cursor") is not None

    # Transactions stay inline (try/except at each call): the IAM policy generator reads
    # each transact_write_items call's items from the function that builds them.
    def _update_header_in(
        self, batch_id: str, status: str, attempt: int, update: str, values: Mapping[str, Any], condition: str = "", **extra: Any
    ) -> dict[str, Any] | None:
        """Update the header only while it is in `status` at `attempt` (invariant 11), and `condition` if given."""
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression=update,
            ConditionExpression="#status = :phase AND attempt = :attempt" + (f" AND {condition}" if condition else ""),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item({**values, ":phase": status, ":attempt": attempt}),
            **extra,
        )

    def _update_if(self, key: Mapping[str, str], **update: Any) -> dict[str, Any] | None:
        """UpdateItem guarded by a condition; None when the condition failed (state moved on, or another writer won).

        An item inside a running transaction (the header, while a chunk's failures are
        counted) rejects plain writes with TransactionConflictException, which botocore
        does not retry: those are retried here, with backoff.
        """
        for conflict in range(_MAX_CONFLICT_ROUNDS):
            if conflict:
                _back_off(conflict)
            try:
                return self.client.update_item(TableName=self.table_name, Key=to_item(key), **update)
            except ClientError as error:
                if _is_condition_failure(error):
                    return None
                if error.response.get("Error", {}).get("Code") != "TransactionConflictException":
                    raise
        raise RuntimeError(f"{key} stayed in conflicting transactions for {_MAX_CONFLICT_ROUNDS} rounds")

    # -- chunk rows ----------------------------------------------------------------

    def put_chunks(self, chunks: Iterable[model.Chunk], attempt: int = 1) -> int:
        """Write chunk rows with BatchWriteItem, retrying UnprocessedItems with backoff.

        Rows carry no TTL: a row leaves only when its items are done or failed, so a
        batch that runs long can never look drained because rows expired (see README).
        """
        requests = [
            {"PutRequest": {"Item": to_item(new_chunk_row(chunk.batch_id, chunk.shard, chunk.chunk_no, chunk.indices, attempt, chunk.span))}}
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

    def get_chunk(self, batch_id: str, shard: int, chunk_no: int) -> dict[str, Any] | None:
        """The chunk row, read strongly consistent; None if gone.

        `pending` is always a set: a row whose set emptied but whose delete was lost has
        none, and must still be removable (`record` deletes it).
        """
        response = self.client.get_item(
            TableName=self.table_name,
            Key=to_item(model.chunk_key(batch_id, shard, chunk_no)),
            ConsistentRead=True,
        )
        return chunk_row(from_item(response["Item"])) if "Item" in response else None

    def record(
        self,
        batch_id: str,
        shard: int,
        chunk_no: int,
        outcome: ItemOutcome,
        *,
        max_attempts: int,
        failed_at: str,
        row: Mapping[str, Any] | None = None,
        settle: Callable[[Plan, Mapping[str, Any]], Plan] | None = None,
    ) -> Recorded | None:
        """Record what one delivery did to a chunk's items, exactly once (invariants 5, 9, 10, 12).

        Every write is conditioned on the pending set being exactly what was read, so
        concurrent deliveries of one message cannot both take the same items, and "the
        row is now empty" is computed from that read, never inferred from a return value.
        An item whose failed attempts reach `max_attempts` moves to the chunk's F row in
        the same transaction that adds it to the header's `failed_items` (fenced on the
        batch attempt), so the batch's failure total is exact without reading F rows.
        On a conflict the row is read again and the plan recomputed.

        Returns what the write did, or None if the row is gone (drained by a duplicate,
        or dead-lettered) or now belongs to a later attempt (a redrive restored it):
        then nothing of this delivery is recorded. Conditions name the row's attempt as
        well as its set, because a restored row may hold the very set a stale delivery
        read before the batch ended.
        """
        attempt = None if row is None else row.get("attempt")
        for conflict in range(_MAX_CONFLICT_ROUNDS):
            if conflict:
                _back_off(conflict)  # a duplicate, or a transaction on the header (TransactionConflict)
            if row is None:
                row = self.get_chunk(batch_id, shard, chunk_no)
                if row is None:
                    return None
            if attempt is not None and row.get("attempt") != attempt:
                return None
            attempt = row.get("attempt")
            plan = plan_record(row, outcome, max_attempts)
            if plan is None:
                return Recorded(frozenset(), frozenset(), frozenset(row["pending"]), wrote=False)
            if settle is not None:
                plan = settle(plan, row)  # the chunk's results object decides first (chalicelib.results)
            if self._apply(batch_id, shard, chunk_no, row, plan, outcome.reason, failed_at):
                return plan.recorded
            row = None  # changed under us: read it again
        raise RuntimeError(f"chunk {batch_id}/{shard}/{chunk_no} kept changing while its results were recorded")

    def _apply(
        self, batch_id: str, shard: int, chunk_no: int, row: Mapping[str, Any], plan: Plan, reason: str, failed_at: str
    ) -> bool:
        """One conditional write (or transaction) for `plan`; False if the row changed since `row` was read."""
        key = to_item(model.chunk_key(batch_id, shard, chunk_no))
        if row["pending"]:
            condition, values = "pending = :read", {":read": set(row["pending"])}
        else:
            condition, values = "attribute_exists(pk) AND attribute_not_exists(pending)", {}
        if "attempt" in row:
            condition, values = f"{condition} AND attempt = :row_attempt", {**values, ":row_attempt": row["attempt"]}
        else:
            condition += " AND attribute_not_exists(attempt)"
        if plan.recorded.pending:
            values.update(
                {":pending": set(plan.recorded.pending), ":tries": plan.tries, ":errors": plan.errors}
            )
            # A row that failed items says so, so the record that finishes it settles its results (results.settler).
            row_write = {
                "Update": {
                    "Key": key,
                    "UpdateExpression": "SET pending = :pending, tries = :tries, errors = :errors"
                    + (", has_failures = :yes" if plan.recorded.failed else ""),
                }
            }
            if plan.recorded.failed:
                values[":yes"] = True
        else:
            row_write = {"Delete": {"Key": key}}
        action = next(iter(row_write))
        row_write[action].update(TableName=self.table_name, ConditionExpression=condition)
        if values:
            row_write[action]["ExpressionAttributeValues"] = to_item(values)
        if not plan.recorded.failed:
            try:
                if action == "Update":
                    self.client.update_item(**row_write[action])
                else:
                    self.client.delete_item(**row_write[action])
            except ClientError as error:
                if _is_condition_failure(error):
                    return False
                raise
            return True
        attempt = int(row.get("attempt", 1))
        failed = set(plan.recorded.failed)
        transaction = [
            row_write,
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_item(model.failed_key(batch_id, shard, chunk_no)),
                    "UpdateExpression": (
                        "ADD failed :failed SET attempt = :attempt, failed_at = :at, "
                        "reason = if_not_exists(reason, :reason), errors = if_not_exists(errors, :errors)"
                        + (", span = if_not_exists(span, :span)" if row.get("span") else "")
                    ),
                    # An F row belongs to one attempt: a redrive restores it before new rows exist.
                    "ConditionExpression": "attribute_not_exists(attempt) OR attempt = :attempt",
                    "ExpressionAttributeValues": to_item(
                        {
                            ":failed": failed,
                            ":attempt": attempt,
                            ":at": failed_at,
                            ":reason": reason,
                            ":errors": plan.failed_errors,
                            **({":span": row["span"]} if row.get("span") else {}),
                        }
                    ),
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_item(model.header_key(batch_id)),
                    "UpdateExpression": "ADD failed_items :count",
                    "ConditionExpression": "attempt = :attempt",
                    "ExpressionAttributeValues": to_item({":count": len(failed), ":attempt": attempt}),
                }
            },
        ]
        try:
            self.client.transact_write_items(TransactItems=transaction)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise
        return True

    def count_dead_letter(self, batch_id: str, shard: int, chunk_no: int, row: Mapping[str, Any], message_id: str) -> bool:
        """Count one more dead-letter round on a chunk row, for dead letter `message_id`; False if the row changed or went.

        The row keeps the id of the dead letter that counted the last round, so a
        redelivery of that same dead letter (at least once, or a retry after a failed
        send) re-sends without counting again.
        """
        rounds = int(row.get("dead_letters", 0))
        condition = "pending = :read AND " if row["pending"] else ""
        condition += "dead_letters = :rounds" if rounds else "attribute_not_exists(dead_letters)"
        values: dict[str, Any] = {":next": rounds + 1, ":id": message_id}
        if row["pending"]:
            values[":read"] = set(row["pending"])
        if rounds:
            values[":rounds"] = rounds
        return self._update_if(
            model.chunk_key(batch_id, shard, chunk_no),
            UpdateExpression="SET dead_letters = :next, dead_letter_id = :id",
            ConditionExpression=f"attribute_exists(pk) AND {condition}",
            ExpressionAttributeValues=to_item(values),
        ) is not None

    def failed_samples(self, batch_id: str, shards: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` sample errors of the lowest failed chunks, reading at most `limit` F rows per shard.

        Bounded work at completion (invariant 12): the alert needs a few examples, not
        every failure; the count comes from the header's `failed_items`.
        """
        if limit <= 0:
            return []
        samples = [
            {"item": int(index), "error": text}
            for shard in range(shards)
            for row in self.failed_rows_after(batch_id, shard, -1, limit)
            for index, text in (row.get("errors") or {}).items()
        ]
        return sorted(samples, key=lambda sample: sample["item"])[:limit]

    def failed_rows(self, batch_id: str, shards: int) -> Iterator[dict[str, Any]]:
        """Every F row of the batch (items that failed), shard by shard, page by page (listing, not completion)."""
        for shard in range(shards):
            yield from self.failed_rows_after(batch_id, shard, -1)

    def failed_rows_after(
        self, batch_id: str, shard: int, after_chunk: int, limit: int | None = None, before_attempt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """F rows of one shard after chunk `after_chunk`'s row (-1: from the first), in key order.

        Only rows of attempts < `before_attempt` if given.
        """
        for row in self._rows_after(batch_id, shard, model.FAILED_PREFIX, after_chunk, limit, before_attempt):
            row["failed"] = set(row["failed"])
            yield row

    def chunk_rows(self, batch_id: str, shard: int, after_chunk: int = -1, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The chunk rows still in a shard after chunk `after_chunk`'s (-1: all), strongly consistent, in key order."""
        for row in self._rows_after(batch_id, shard, model.CHUNK_PREFIX, after_chunk, limit):
            yield chunk_row(row)

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

    def restore_failed(
        self, batch_id: str, attempt: int, rows: list[Mapping[str, Any]], cursor: str | None, next_cursor: str
    ) -> bool:
        """Redrive: turn F rows back into chunk rows of `attempt` and move the cursor, in one transaction.

        Fenced (invariant 11): only while the header is CREATING at `attempt` with the
        cursor where this caller read it, so two processes resuming one redrive cannot
        both restore a group, and a lagging one cannot restore after the seal. The
        header lists the restored chunks as `unsent` until their messages are
        sent, so a resume re-sends exactly those. False if the header moved on.
        """
        transaction: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_item(model.header_key(batch_id)),
                    "UpdateExpression": "SET redrive_cursor = :next, unsent = :unsent",
                    "ConditionExpression": (
                        "#status = :creating AND attempt = :attempt AND attribute_not_exists(unsent) AND "
                        + ("redrive_cursor = :cursor" if cursor else "attribute_not_exists(redrive_cursor)")
                    ),
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": to_item(
                        {
                            ":next": next_cursor,
                            ":unsent": [[row["shard"], row["chunk_no"]] for row in rows],
                            ":creating": model.CREATING,
                            ":attempt": attempt,
                            **({":cursor": cursor} if cursor else {}),
                        }
                    ),
                }
            }
        ]
        for row in rows:
            transaction.append(
                {"Put": {"TableName": self.table_name, "Item": to_item(new_chunk_row(batch_id, row["shard"], row["chunk_no"], row["failed"], attempt, row.get("span")))}}
            )
            transaction.append(
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": to_item(model.failed_key(batch_id, row["shard"], row["chunk_no"])),
                        "ConditionExpression": "failed = :failed",
                        "ExpressionAttributeValues": to_item({":failed": set(row["failed"])}),
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=transaction)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise
        return True

    def clear_unsent(self, batch_id: str, attempt: int, unsent: list[list[int]]) -> bool:
        """Record that the messages of the group listed as `unsent` went out (fenced on attempt and that list)."""
        return self._update_header_in(
            batch_id, model.CREATING, attempt, "REMOVE unsent", {":unsent": unsent}, "unsent = :unsent"
        ) is not None

    def put_poison(self, message_id: str, body: str, error: str, received_at: str, queue: str, expires_at: int) -> bool:
        """Keep a message that is no batch's chunk, once per message id, until `expires_at` (TTL); False if kept already."""
        return self._put_new(
            {
                "pk": model.POISON_PK,
                "sk": message_id,
                "body": body[:MAX_POISON_BODY],
                "error": error[:1000],
                "received_at": received_at,
                "queue": queue,
                "expires_at": expires_at,
            }
        )

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

