"""How soon a work message whose items failed comes back: RETRY_DELAY_SECONDS, doubling per attempt.

A message returned in `batchItemFailures` would wait out the work queue's visibility
timeout (6x the processor's timeout, as AWS asks: 12 minutes at 120 s). The processor
shortens that wait for messages it returns because items raised: it sets each one's
visibility (ChangeMessageVisibility, with the receipt handle Lambda put in the event
record) to the retry delay, so the items' next attempt comes that much later:

    delay = RETRY_DELAY_SECONDS x 2^(attempts used - 1), at most MAX_RETRY_DELAY,
            plus up to RETRY_JITTER of itself at random

Attempts are the items' own (`tries` on the chunk row, invariant 9), never receives. The
jitter spreads retries that failed together (a dependency down) so they do not return
in lockstep. SQS applies a changed visibility to that receive only; the next receive
has the queue's full timeout again, so a slow retry is never cut short. If the change
fails (or the invocation dies first), the message simply waits its queue's visibility
timeout, as before: never lost, at worst later.
"""

from __future__ import annotations

import random
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws, log
from chalicelib.config import env_int

# Deployed default: long enough for a throttled or briefly failing dependency to recover,
# short enough that an item's three attempts end within minutes, not the half hour of
# visibility timeouts. The local stack sets a few seconds (.chalice/config.json, stage local).
DEFAULT_RETRY_DELAY_SECONDS = 30
# Lambda's own 15 minutes: no item waits longer than the longest invocation between attempts.
MAX_RETRY_DELAY = 900
RETRY_JITTER = 0.2
# ChangeMessageVisibilityBatch takes at most 10 entries.
_BATCH_ENTRIES = 10


def retry_delay_seconds() -> int:
    """RETRY_DELAY_SECONDS from the environment (0 to MAX_RETRY_DELAY); ConfigError names it if invalid."""
    return env_int("RETRY_DELAY_SECONDS", DEFAULT_RETRY_DELAY_SECONDS, 0, MAX_RETRY_DELAY)


def delay_for(attempts: int, base: int, rng: random.Random | None = None) -> int:
    """Whole seconds until the next attempt of items that have used `attempts` attempts each.

    >>> delay_for(1, 30, random.Random(0)), delay_for(2, 30, random.Random(0)), delay_for(9, 30, random.Random(0))
    (35, 70, 900)
    """
    if base <= 0:
        return 0
    doubled = min(MAX_RETRY_DELAY, base * 2 ** max(0, attempts - 1))
    jitter = (rng or random).uniform(0, RETRY_JITTER * doubled)
    return min(MAX_RETRY_DELAY, int(round(doubled + jitter)))


def delay_messages(queue_name: str, delays: list[tuple[str, str, int]]) -> int:
    """Make each (message id, receipt handle, seconds) message visible again after its seconds.

    Returns how many were changed. Never raises: a message whose change fails waits its
    queue's visibility timeout instead, and one warning says so.
    """
    entries = [
        {"Id": str(position), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
        for position, (_, handle, seconds) in enumerate(delays)
    ]
    ids = {entry["Id"]: message_id for entry, (message_id, _, _) in zip(entries, delays)}
    changed = 0
    failed: list[str] = []
    try:
        sqs, url = aws.client("sqs"), aws.queue_url(queue_name)
        for start in range(0, len(entries), _BATCH_ENTRIES):
            response = sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries[start : start + _BATCH_ENTRIES])
            changed += len(response.get("Successful") or [])
            failed += [f"{ids.get(entry['Id'], entry['Id'])}: {entry.get('Code')}" for entry in response.get("Failed") or []]
    except (BotoCoreError, ClientError) as error:
        failed.append(f"{type(error).__name__}: {error}")
    if failed:
        log.warning(
            "retry delay not set; those messages wait the queue's visibility timeout",
            queue=queue_name,
            changed=changed,
            failed=failed[:_BATCH_ENTRIES],
        )
    return changed
