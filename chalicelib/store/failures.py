"""Failed rows (`sk = F#<chunk>`: items that failed for good, kept to list and redrive) and poison rows.

A failure total is never counted from these rows at completion (invariant 12): the
header's `failed_items` changes in the same transaction that fills them.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from chalicelib import model
from chalicelib.chunks import new_chunk_row
from chalicelib.store.base import Table, to_item

# A poison message is kept for reading, not replay: the first 10 KB say what it was.
MAX_POISON_BODY = 10_000


class Failures(Table):
    """Reads and writes of failed rows and poison rows."""

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
        return self._transact(transaction)

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
