"""Stats rows (`sk = T#<slot>`, in the header's partition): counters a batch's processors add to.

Observations only (chalicelib.itemstats): written with ADD and never read first, so
concurrent writers and retries just add up; read back whole by one Query. No Query that
decides anything reads them: segment Queries take `P#` keys, chunk and failure Queries
another partition, the indexes only headers, and `model.parse_key` ignores them on the
stream.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from chalicelib import itemstats, log, model
from chalicelib.store.base import Table, from_item, to_item


class Stats(Table):
    """Writes and reads of stats rows."""

    def add_stats(self, batch_id: str, slot: int, counts: Mapping[str, int], expires_at: int | None = None) -> bool:
        """ADD every counter of `counts` to the batch's stats row `slot`: one UpdateItem, no read, no condition.

        `expires_at` (epoch seconds) sets the row's TTL, pushed on by every write (ROW_TTL_DAYS
        after the last). False if there was nothing to add.
        """
        counts = {name: int(value) for name, value in counts.items() if value}
        if not counts:
            return False
        names = {f"#c{n}": name for n, name in enumerate(counts)}
        values: dict[str, Any] = {f":c{n}": value for n, value in enumerate(counts.values())}
        update = "ADD " + ", ".join(f"#c{n} :c{n}" for n in range(len(counts)))
        if expires_at is not None:
            update += " SET expires_at = :expires"
            values[":expires"] = expires_at
        self.client.update_item(
            TableName=self.table_name,
            Key=to_item(model.stats_key(batch_id, slot)),
            UpdateExpression=update,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_item(values),
        )
        return True

    def note_stats(self, batch_id: str, slot: int, counts: Mapping[str, int], row_ttl_days: int) -> bool:
        """`add_stats` with its TTL ROW_TTL_DAYS from now; a failure is a logged warning and False, never the caller's."""
        try:
            return self.add_stats(batch_id, slot, counts, int(time.time()) + row_ttl_days * 86_400)
        except Exception as error:  # observations: losing some never fails the work they describe
            log.warning("batch stats not written (its item times and cost will miss them)", batch_id=batch_id, error=str(error))
            return False

    def batch_stats(self, batch_id: str) -> dict[str, int]:
        """The batch's counters and histogram, summed over its stats rows (one Query; eventually consistent)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :stats)",
            "ExpressionAttributeValues": to_item({":pk": f"B#{batch_id}", ":stats": model.STATS_PREFIX}),
        }
        rows = []
        while True:
            page = self.client.query(**kwargs)
            rows += [from_item(item) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return itemstats.summed(rows)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
