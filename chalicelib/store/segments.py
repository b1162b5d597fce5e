"""Segment rows (`sk = P#<n>`, in the header's partition): what planners still have to expand.

A segment is written once per attempt before the batch is planned, held by one planner
under a lease, checkpointed group by group, and deleted in the transaction that adds its
totals to the header (invariants 13 and 16).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from chalicelib import model
from chalicelib.store.base import Table, from_item, to_item

# TransactWriteItems takes 100 actions: the header check and 99 segment rows.
SEGMENTS_PER_TRANSACTION = 99


class Segments(Table):
    """Reads and writes of segment rows."""

    def put_segments(
        self,
        batch_id: str,
        attempt: int,
        specs: Mapping[int, Mapping[str, Any]],
        sent_at: int,
        marker: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write segment rows while the batch is CREATING at `attempt` and not yet planned; False once it is.

        Each group is one transaction with a check on the header, so once `planned` is set
        (and planning messages exist) no segment row can be written again: a sweep that
        re-plans late can never re-create a segment a planner already finished (invariant
        14). Before that no planner has touched a row, so writing one again is harmless.
        Rows record their `attempt` (a REMOVE seen on the stream proves which attempt it
        ended) and `sent_at` (when their planning message went out, for the sweeper).
        `marker` (an open batch's items call, see `items_call_key`) is written in the first
        group's transaction, only if it does not exist: False if it does.
        """
        numbers = sorted(specs)
        for start in range(0, len(numbers), SEGMENTS_PER_TRANSACTION):
            group = {number: specs[number] for number in numbers[start : start + SEGMENTS_PER_TRANSACTION]}
            if not self._put_segment_group(batch_id, attempt, group, sent_at, marker if start == 0 else None):
                return False
        return True

    def _put_segment_group(
        self, batch_id: str, attempt: int, specs: Mapping[int, Mapping[str, Any]], sent_at: int, marker: Mapping[str, Any] | None = None
    ) -> bool:
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
        if marker is not None:
            transaction.append(
                {"Put": {"TableName": self.table_name, "Item": to_item(dict(marker)), "ConditionExpression": "attribute_not_exists(pk)"}}
            )
        # False: planned by a rival, or the batch moved on (or the marker exists).
        return self._transact(transaction, retry_conflicts=True)

    def next_segment(self, batch_id: str, attempt: int) -> int | None:
        """A new segment number of an open batch still taking items (CREATING, not planned, not cancelled); None once not.

        Counted on the header (`segments`): numbers are never reused, a call that fails
        after taking one leaves a gap, which nothing reads.
        """
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression="ADD #segments :one",
            ConditionExpression=(
                "#status = :creating AND attempt = :attempt AND is_open = :yes "
                "AND (attribute_not_exists(planned) OR planned = :no) AND attribute_not_exists(cancelled_at)"
            ),
            ExpressionAttributeNames={"#status": "status", "#segments": "segments"},
            ExpressionAttributeValues=to_item({":one": 1, ":creating": model.CREATING, ":attempt": attempt, ":yes": True, ":no": False}),
            ReturnValues="UPDATED_NEW",
        )
        return int(from_item(response["Attributes"])["segments"]) - 1 if response else None

    def items_call(self, batch_id: str, key_digest: str) -> dict[str, Any] | None:
        """An open batch's items call recorded under this key (strongly consistent), or None."""
        response = self.client.get_item(
            TableName=self.table_name, Key=to_item(model.items_call_key(batch_id, key_digest)), ConsistentRead=True
        )
        return from_item(response["Item"]) if "Item" in response else None

    def has_segment(self, batch_id: str, segment: int) -> bool:
        response = self.client.get_item(
            TableName=self.table_name, Key=to_item(model.segment_key(batch_id, segment)), ConsistentRead=True, ProjectionExpression="pk"
        )
        return "Item" in response

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
        # The header is often busy (parallel segments finishing, items failing): a conflict is tried
        # again; a failed condition (lease lost, batch moved on) is final.
        return self._transact(transaction, retry_conflicts=True)

    def delete_segment(self, batch_id: str, segment: int) -> None:
        """Drop a segment row of a batch that failed (nothing will expand it)."""
        self.client.delete_item(TableName=self.table_name, Key=to_item(model.segment_key(batch_id, segment)))
