"""Chunk rows (`pk = B#<batch>#<shard>`, `sk = C#<chunk>`): the items of one message still pending.

A row exists while any of its items is pending; the batch is drained when no shard holds
one. Every change is conditioned on the set as read (invariants 5, 9, 10).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

from botocore.exceptions import ClientError

from chalicelib import model
from chalicelib.chunks import ItemOutcome, Plan, Recorded, chunk_row, new_chunk_row, plan_record
from chalicelib.store.base import BATCH_WRITE_ROWS, MAX_CONFLICT_ROUNDS, Table, back_off, from_item, is_condition_failure, to_item


class Chunks(Table):
    """Reads and writes of chunk rows."""

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
        for conflict in range(MAX_CONFLICT_ROUNDS):
            if conflict:
                back_off(conflict)  # a duplicate, or a transaction on the header (TransactionConflict)
            if row is None:
                row = self.get_chunk(batch_id, shard, chunk_no)
                if row is None:
                    return None
            if attempt is not None and row.get("attempt") != attempt:
                return None
            attempt = row.get("attempt")
            plan = plan_record(row, outcome, max_attempts)
            if plan is None:
                return Recorded(frozenset(), frozenset(), frozenset(row["pending"]))
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
                if is_condition_failure(error):
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
        return self._transact(transaction)

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

    def chunk_rows(self, batch_id: str, shard: int, after_chunk: int = -1, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The chunk rows still in a shard after chunk `after_chunk`'s (-1: all), strongly consistent, in key order."""
        for row in self._rows_after(batch_id, shard, model.CHUNK_PREFIX, after_chunk, limit):
            yield chunk_row(row)

    def last_chunk_rows(self, batch_id: str, shard: int, limit: int, below: str | None = None) -> list[dict[str, Any]]:
        """Up to `limit` chunk rows of a shard, the highest key first, below key `below` if given (strongly consistent).

        The rows SQS reaches last come first: a cancel stops the work that has not started.
        """
        high = below if below is not None else model.CHUNK_PREFIX + "~"
        response = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues=to_item({":pk": model.shard_pk(batch_id, shard), ":low": model.CHUNK_PREFIX, ":high": high}),
            ConsistentRead=True,
            ScanIndexForward=False,
            Limit=limit + 1,  # BETWEEN includes `below` itself, which is dropped
        )
        rows = [from_item(item) for item in response.get("Items") or []]
        rows = [row for row in rows if row["sk"] != below][:limit]
        return [chunk_row({**row, "shard": shard, "chunk_no": int(row["sk"][len(model.CHUNK_PREFIX) :])}) for row in rows]

    def lowest_pending_chunk(self, batch_id: str, shard: int) -> int | None:
        """The lowest chunk number with a row in the shard, or None: for progress estimates (eventually consistent, 0.5 RRU)."""
        response = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :chunk)",
            ExpressionAttributeValues=to_item({":pk": model.shard_pk(batch_id, shard), ":chunk": model.CHUNK_PREFIX}),
            Limit=1,
            ProjectionExpression="sk",
        )
        items = response.get("Items") or []
        return int(from_item(items[0])["sk"][len(model.CHUNK_PREFIX) :]) if items else None

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
