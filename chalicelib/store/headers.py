"""Batch headers (`sk = META`): a batch's phase, attempt, totals and alert, and the open-batches index.

Every phase change is one conditional write fenced on the header's status and attempt
(invariant 11), so a stale finalizer, sweeper or redrive never touches a later attempt.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from chalicelib import model
from chalicelib.store.base import Table, from_item, to_item


class Headers(Table):
    """Reads and writes of batch headers."""

    def create_header(self, header: Mapping[str, Any], status: str = model.CREATING) -> bool:
        """Write a new header (CREATING, or FAILED for a run that cannot start); False if the batch exists."""
        item = {
            **model.header_key(header["batch_id"]),
            **header,
            "status": status,
            "open_pk": model.OPEN_PK,
            "open_sk": f"{header['created_at']}#{header['batch_id']}",
            "history_pk": model.HISTORY_PK,
            "history_sk": f"{header['created_at']}#{header['batch_id']}",
        }
        return self._put_new(item)

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

    def complete(
        self, batch_id: str, attempt: int, status: str, fields: Mapping[str, Any], cancelled: bool = False
    ) -> dict[str, Any] | None:
        """SEALED (no open shards) -> final status, once (invariant 4). The header if this call won.

        Fenced on whether the batch was cancelled as the caller read it (`cancelled`), so a
        cancel that lands between that read and this write can never end as COMPLETED.
        """
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":f{n}": value for n, value in enumerate(fields.values())}
        assignments = ", ".join(f"#f{n} = :f{n}" for n in range(len(fields)))
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression=f"SET #status = :final, {assignments}" if fields else "SET #status = :final",
            ConditionExpression=(
                "#status = :sealed AND attempt = :attempt AND attribute_not_exists(open_shards) AND "
                + ("attribute_exists(cancelled_at)" if cancelled else "attribute_not_exists(cancelled_at)")
            ),
            ExpressionAttributeNames={"#status": "status", **names},
            ExpressionAttributeValues=to_item({":final": status, ":sealed": model.SEALED, ":attempt": attempt, **values}),
            ReturnValues="ALL_NEW",
        )
        return from_item(response["Attributes"]) if response else None

    def mark_cancelled(self, batch_id: str, attempt: int, now: str) -> dict[str, Any] | None:
        """Stamp `cancelled_at` on a batch still CREATING or SEALED at `attempt`; the header after, or None if it ended.

        Idempotent: a second cancel keeps the first stamp. Rows are cancelled after this
        (chalicelib.cancelling); completion then ends the batch CANCELLED.
        """
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET cancelled_at = if_not_exists(cancelled_at, :now)",
            ConditionExpression="#status IN (:creating, :sealed) AND attempt = :attempt",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item(
                {":now": now, ":creating": model.CREATING, ":sealed": model.SEALED, ":attempt": attempt}
            ),
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
                "#status IN (:done, :failed, :failed_batch, :cancelled) AND attribute_not_exists(notified_at) "
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
                    ":cancelled": model.CANCELLED,
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

    def history(
        self, limit: int, start: Mapping[str, Any] | None = None, status: str | None = None, definition: str | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to `limit` batch headers (their HISTORY_FIELDS), newest first, from `start`; and where the next page starts.

        Filters apply to the page read: a page may hold fewer than `limit` (even none)
        while a next page exists. One Query of at most `limit` index items a call.
        """
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": model.HISTORY_INDEX,
            "KeyConditionExpression": "history_pk = :batches",
            "ExpressionAttributeValues": {":batches": model.HISTORY_PK},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        filters = []
        if status is not None:
            filters.append("#status = :status")
            kwargs["ExpressionAttributeNames"] = {"#status": "status"}
            kwargs["ExpressionAttributeValues"][":status"] = status
        if definition is not None:
            filters.append("#definition = :definition")
            kwargs["ExpressionAttributeNames"] = {**kwargs.get("ExpressionAttributeNames", {}), "#definition": "definition"}
            kwargs["ExpressionAttributeValues"][":definition"] = definition
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        kwargs["ExpressionAttributeValues"] = to_item(kwargs["ExpressionAttributeValues"])
        if start:
            kwargs["ExclusiveStartKey"] = to_item(start)
        page = self.client.query(**kwargs)
        last = from_item(page["LastEvaluatedKey"]) if "LastEvaluatedKey" in page else None
        return [from_item(item) for item in page["Items"]], last

    def begin_redrive(self, batch_id: str, attempt: int, started_at: str) -> dict[str, Any] | None:
        """COMPLETED_WITH_FAILURES (attempt n) -> CREATING (attempt n+1); the header, or None if not in that state."""
        response = self._update_if(
            model.header_key(batch_id),
            UpdateExpression=(
                "SET #status = :creating, attempt = :next, redrive_started_at = :at, open_pk = :open, open_sk = :since "
                "REMOVE notified_at, alert_id, completed_at, notify_lease_until, sealed_at, succeeded, failed, sample_errors, "
                "failed_items, redrive_cursor, unsent, resend_cursor, resends, resent_at, notify_tries, "
                "item_seconds_observed, cost"
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

    def note_observed(self, definition: str, observed: Mapping[str, Any]) -> None:
        """Keep a completed batch's observed item times for its definition's next batch (the last completion wins)."""
        self.client.put_item(TableName=self.table_name, Item=to_item({**model.observed_key(definition), **observed}))

    def last_observed(self, definition: str) -> dict[str, Any] | None:
        """The item times the definition's last completed batch observed ({batch_id, count, p50, p99, max}), or None."""
        response = self.client.get_item(TableName=self.table_name, Key=to_item(model.observed_key(definition)))
        return from_item(response["Item"]) if "Item" in response else None

    def mark_notified(self, batch_id: str, attempt: int, notified_at: str, alert_id: str) -> bool:
        """Record that attempt `attempt`'s alert went out; False if recorded already or the batch moved on."""
        return self._update_if(
            model.header_key(batch_id),
            UpdateExpression="SET notified_at = :at, alert_id = :alert REMOVE open_pk, open_sk, notify_lease_until",
            ConditionExpression=(
                "attempt = :attempt AND #status IN (:done, :failed, :failed_batch, :cancelled) AND attribute_not_exists(notified_at)"
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
                    ":cancelled": model.CANCELLED,
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

    def clear_unsent(self, batch_id: str, attempt: int, unsent: list[list[int]]) -> bool:
        """Record that the messages of the group listed as `unsent` went out (fenced on attempt and that list)."""
        return self._update_header_in(
            batch_id, model.CREATING, attempt, "REMOVE unsent", {":unsent": unsent}, "unsent = :unsent"
        ) is not None

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
