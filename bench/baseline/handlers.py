"""The origin design, literally: one row and one message per item, for `make bench` to beat.

This is the naive design batchdrain's README argues against, built only to be measured
next to it on the same local stack (never deployed):

- batcher (cron): header `CREATING`; then for every 25 items one BatchWriteItem of
  their rows (`pk=B#<batch>`, `sk=I#<index>`) followed by their messages, one per item,
  10 to a SendMessageBatch; then the seal (`CREATING -> SEALED`).
- processor (SQS, batch size and concurrency as batchdrain's): runs the task on each
  message's item, then deletes that item's row; a failing item's message goes back
  (`batchItemFailures`).
- finalizer (the table's stream, filtered to row REMOVEs and the seal as batchdrain's
  is): on each REMOVE, a strongly consistent `Query Limit=1` on the batch's partition
  for a leftover row; when none is left, one conditional write `SEALED -> COMPLETED`,
  whose winner publishes the alert. The seal's own record checks too, so rows drained
  before the seal still end the batch.

It keeps the origin design's promises (alert once, never early) and nothing more: no
dead-letter handling, sweeper, attempt fencing or shards. Writes are batched where AWS
allows it, so the comparison is with a careful naive implementation, not a careless one.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable

from botocore.exceptions import ClientError

ITEM_PREFIX = "I#"
HEADER_SK = "META"
ROWS_PER_WRITE = 25  # BatchWriteItem's limit
MESSAGES_PER_SEND = 10  # SendMessageBatch's limit


class Baseline:
    """The baseline's handlers, bound to its clients and resources.

    `clients(service)` returns a boto3 client (from a session whose requests are
    counted); `task(item)` runs one item; `on_item_done()` is called after each item's
    task returns (the benchmark's record of when the last item finished).
    """

    def __init__(
        self,
        clients: Callable[[str], Any],
        *,
        table_name: str,
        queue_url: str,
        topic_arn: str,
        task: Callable[[dict[str, Any]], Any],
        on_item_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.dynamodb, self.sqs, self.sns = clients("dynamodb"), clients("sqs"), clients("sns")
        self.table_name = table_name
        self.queue_url = queue_url
        self.topic_arn = topic_arn
        self.task = task
        self.on_item_done = on_item_done

    # -- batcher ------------------------------------------------------------------

    def create_batch(self, event: dict[str, Any], context: Any = None, *, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The cron handler: rows, then messages, then the seal. Returns {"batch_id", "total_items"}."""
        slot = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        batch_id = f"baseline-{slot:%Y-%m-%dT%H:%MZ}"
        pk = f"B#{batch_id}"
        self.dynamodb.put_item(
            TableName=self.table_name,
            Item={"pk": {"S": pk}, "sk": {"S": HEADER_SK}, "status": {"S": "CREATING"}, "total_items": {"N": str(len(items))}},
            ConditionExpression="attribute_not_exists(pk)",
        )
        for start in range(0, len(items), ROWS_PER_WRITE):
            group = list(enumerate(items[start : start + ROWS_PER_WRITE], start))
            self._write_rows(pk, [index for index, _ in group])
            for first in range(0, len(group), MESSAGES_PER_SEND):
                entries = [
                    {"Id": str(index), "MessageBody": json.dumps({"batch_id": batch_id, "index": index, "item": item})}
                    for index, item in group[first : first + MESSAGES_PER_SEND]
                ]
                self._send(entries)
        self.dynamodb.update_item(
            TableName=self.table_name,
            Key={"pk": {"S": pk}, "sk": {"S": HEADER_SK}},
            UpdateExpression="SET #s = :sealed",
            ConditionExpression="#s = :creating",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":sealed": {"S": "SEALED"}, ":creating": {"S": "CREATING"}},
        )
        return {"batch_id": batch_id, "total_items": len(items)}

    def _write_rows(self, pk: str, indices: list[int]) -> None:
        requests = [{"PutRequest": {"Item": {"pk": {"S": pk}, "sk": {"S": item_sk(index)}}}} for index in indices]
        pending = {self.table_name: requests}
        for attempt in range(8):
            pending = self.dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                return
            time.sleep(0.05 * 2**attempt)
        raise RuntimeError(f"BatchWriteItem left {sum(map(len, pending.values()))} rows unwritten")

    def _send(self, entries: list[dict[str, str]]) -> None:
        for attempt in range(8):
            failed = {entry["Id"] for entry in self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed", [])}
            if not failed:
                return
            entries = [entry for entry in entries if entry["Id"] in failed]
            time.sleep(0.05 * 2**attempt)
        raise RuntimeError(f"SendMessageBatch left {len(entries)} messages unsent")

    # -- processor ----------------------------------------------------------------

    def process(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """The SQS handler: the task on each message's item, then that item's row deleted."""
        failures = []
        for record in event["Records"]:
            message = json.loads(record["body"])
            try:
                self.task(message["item"])
            except Exception:
                failures.append({"itemIdentifier": record["messageId"]})
                continue
            self.on_item_done()
            self.dynamodb.delete_item(
                TableName=self.table_name,
                Key={"pk": {"S": f"B#{message['batch_id']}"}, "sk": {"S": item_sk(message["index"])}},
            )
        return {"batchItemFailures": failures}

    # -- finalizer ----------------------------------------------------------------

    def finalize(self, event: dict[str, Any], context: Any = None) -> list[str]:
        """The stream handler: a leftover Query per REMOVE (and per seal); the emptied batch completed once."""
        completed: list[str] = []
        for record in event["Records"]:
            keys = record["dynamodb"]["Keys"]
            pk, sk = keys["pk"]["S"], keys["sk"]["S"]
            is_remove = record["eventName"] == "REMOVE" and sk.startswith(ITEM_PREFIX)
            is_seal = sk == HEADER_SK and record["eventName"] == "MODIFY"
            if not (is_remove or is_seal) or pk[2:] in completed:
                continue  # the rest of a batch this invocation just completed asks nothing more
            if self._has_rows_left(pk):
                continue
            if self._complete(pk):
                completed.append(pk[2:])
        return completed

    def _has_rows_left(self, pk: str) -> bool:
        response = self.dynamodb.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :item)",
            ExpressionAttributeValues={":pk": {"S": pk}, ":item": {"S": ITEM_PREFIX}},
            Limit=1,
            ConsistentRead=True,
        )
        return response["Count"] > 0

    def _complete(self, pk: str) -> bool:
        """`SEALED -> COMPLETED`, once; the winner publishes the alert."""
        try:
            header = self.dynamodb.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": pk}, "sk": {"S": HEADER_SK}},
                UpdateExpression="SET #s = :done",
                ConditionExpression="#s = :sealed",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":done": {"S": "COMPLETED"}, ":sealed": {"S": "SEALED"}},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False  # not sealed yet (the seal's record checks again), or completed already
            raise
        batch_id, items = pk[2:], int(header["total_items"]["N"])
        message = {"batch_id": batch_id, "status": "COMPLETED", "totals": {"items": items, "succeeded": items, "failed": 0}}
        self.sns.publish(
            TopicArn=self.topic_arn, Subject=f"batch {batch_id} completed: {items:,} items", Message=json.dumps(message)
        )
        return True


def item_sk(index: int) -> str:
    return f"{ITEM_PREFIX}{index:010d}"
