"""The processor's CPU per item: one worker handoff per message (TaskRunner) vs one per item (the old runner).

    python -m bench.processor_cpu [--items 10000] [--per-message 100]

Runs `items` noop items (the task returns None) through `processor.process_message`,
against moto in-process (the table and queues the unit tests create, with
`batchdrain_local.resources.create_resources`), in messages of `per-message` items, each
with a Deadline from a fake Lambda context that always has 15 minutes left, so every
item runs on a worker thread. Once with `processor.TaskRunner` (one handoff per
message) and once with `PerItemHandoffRunner` (the runner as it was before: one queue
put/get per item, kept here only as the baseline). CPU is `time.process_time()`: every
thread of the process, so the worker's and moto's CPU count too.

moto's share (a GetItem and a DeleteItem per message) is the same for both, so the
runners alone are measured as well: `run_all` over the same items and messages, no AWS.

Prints two JSON lines:

    {"items", "cpu_ms_per_item_per_message_handoff", "cpu_ms_per_item_per_item_handoff", "ratio"}
    {"runner_alone": true, "items", ...the same..., "handoffs_per_message_handoff", "handoffs_per_item_handoff"}

ratio = per-item-handoff CPU / per-message-handoff CPU (above 1: the per-message runner is cheaper).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import boto3
from moto import mock_aws

from batchdrain_local import resources
from chalicelib import aws, model, processor
from chalicelib.config import Settings
from chalicelib.deadline import Deadline
from chalicelib.processor import ItemRuns, ItemTimeout, TaskRunner
from chalicelib.store import BatchStore
from chalicelib.tasks import get_task

REGION = "us-east-1"
TABLE_NAME = "batchdrain-bench-processor"
WORK_QUEUE_NAME = "batchdrain-bench-processor-work"
DEAD_LETTER_QUEUE_NAME = "batchdrain-bench-processor-dead-letters"
PLANNING_QUEUE_NAME = "batchdrain-bench-processor-planning"
ALERT_TOPIC_ARN = f"arn:aws:sns:{REGION}:123456789012:batchdrain-alerts"
TASK = "noop"
ITEM_SECONDS = 0.01  # what each message says a noop item may take: the deadline always allows it here
SLOT = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
# The settings environment (as tests/unit/conftest.py's aws_env sets it), with fake credentials.
ENVIRONMENT = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "TABLE_NAME": TABLE_NAME,
    "WORK_QUEUE_NAME": WORK_QUEUE_NAME,
    "DEAD_LETTER_QUEUE_NAME": DEAD_LETTER_QUEUE_NAME,
    "PLANNING_QUEUE_NAME": PLANNING_QUEUE_NAME,
    "ALERT_TOPIC_ARN": ALERT_TOPIC_ARN,
}
# Settings that would point the clients elsewhere than moto: unset for the run.
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS",
         "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_S3")


class PlentyOfTime:
    """A Lambda context with 15 minutes always left: the deadline never stops an item, but items run on a worker."""

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


class PerItemHandoffRunner:
    """THE BASELINE: processor.TaskRunner as it was before, one worker handoff (queue put/get) per item.

    `run`, `_worker` and `_serve_per_item` are the old code as it was (plus a count of
    handoffs); `run_all` is the old process_message loop over `run` (with the same
    per-item timing the new runner reports), so process_message can use either runner.
    Not used by the app.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inbox: queue.Queue | None = None
        self.handoffs = 0

    def run_all(
        self, task: Any, items: Sequence[tuple[int, Any]], options: Any, item_seconds: float, deadline: Deadline
    ) -> ItemRuns:
        runs = ItemRuns()
        stopped = False
        for index, item in items:
            stopped = stopped or not deadline.allows(item_seconds)
            if stopped:
                runs.untouched.append(index)
                continue
            started = time.perf_counter()
            try:
                runs.values[index] = self.run(task, item, options, deadline.seconds_left())
            except ItemTimeout as error:
                runs.errors[index] = error
                stopped = True
            except Exception as error:
                runs.errors[index] = error
            runs.seconds[index] = time.perf_counter() - started
        return runs

    def run(self, task: Any, item: Any, options: Any, timeout: float | None) -> Any:
        if timeout is None:
            return task(item, options)
        inbox = self._worker()
        reply: queue.Queue = queue.Queue(maxsize=1)
        inbox.put((task, item, options, reply))
        self.handoffs += 1
        try:
            error, value = reply.get(timeout=timeout)
        except queue.Empty:
            with self._lock:
                self._inbox = None
            raise ItemTimeout(f"still running after {timeout:.1f} s, when the invocation had to stop") from None
        if error is not None:
            raise error
        return value

    def _worker(self) -> queue.Queue:
        with self._lock:
            if self._inbox is None:
                self._inbox = queue.Queue()
                worker = threading.Thread(target=_serve_per_item, args=(self._inbox,), name="bench-per-item", daemon=True)
                worker.start()
            return self._inbox


def _serve_per_item(inbox: queue.Queue) -> None:
    while True:
        task, item, options, reply = inbox.get()
        try:
            value = task(item, options)
        except BaseException as error:
            reply.put((error, None))
        else:
            reply.put((None, value))


RUNNERS: dict[str, Callable[[], Any]] = {
    "per_message_handoff": TaskRunner,
    "per_item_handoff": PerItemHandoffRunner,
}


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    """The settings environment for the run; the caller's put back afterwards, and clients forgotten both ways."""
    saved = {name: os.environ.get(name) for name in (*ENVIRONMENT, *UNSET)}
    for name in UNSET:
        os.environ.pop(name, None)
    os.environ.update(ENVIRONMENT)
    aws.reset_clients()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        aws.reset_clients()


def _messages(batch: str, items: int, per_message: int) -> list[Any]:
    """Chunks of `per_message` noop items (index = position), one batch, shard 0."""
    batch_id = model.batch_id_for(batch, SLOT)
    return [
        model.Chunk(batch_id, 0, number, TASK, {}, tuple((index, {"id": index}) for index in range(start, end)), ITEM_SECONDS)
        for number, start in enumerate(range(0, items, per_message))
        for end in [min(start + per_message, items)]
    ]


def _cpu_ms_per_item(run: Callable[[], None], items: int) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000 / items


def measure_process_message(items: int = 10_000, per_message: int = 100) -> dict[str, Any]:
    """CPU per item of process_message with each runner (moto in-process), its handoffs, and items done."""
    figures: dict[str, Any] = {"items": items}
    with _environment(), mock_aws():
        clients = {service: boto3.client(service, region_name=REGION) for service in ("dynamodb", "sqs", "sns", "s3")}
        resources.create_resources(
            clients.__getitem__, TABLE_NAME, WORK_QUEUE_NAME, dead_letter_queue_name=DEAD_LETTER_QUEUE_NAME,
            planning_queue_name=PLANNING_QUEUE_NAME, visibility_timeout=30, max_receive_count=5,
        )
        settings = Settings.from_env()
        store = BatchStore(settings.table_name)
        for name, make in RUNNERS.items():
            runner = make()
            warm_up = _messages(f"warm-{name.replace('_', '-')}", per_message, per_message)
            measured = _messages(f"bench-{name.replace('_', '-')}", items, per_message)
            store.put_chunks(warm_up + measured)
            bodies = [chunk.body() for chunk in measured]
            done = 0

            def run_messages(chunks_bodies: list[str]) -> None:
                nonlocal done
                for body in chunks_bodies:
                    outcome = processor.process_message(body, store, settings, Deadline(PlentyOfTime()), runner=runner)
                    done += len(outcome.done)

            run_messages([chunk.body() for chunk in warm_up])  # clients, the worker thread, caches: not measured
            done, runner.handoffs = 0, 0
            figures[f"cpu_ms_per_item_{name}"] = _cpu_ms_per_item(lambda: run_messages(bodies), items)
            figures[f"handoffs_{name}"] = runner.handoffs
            figures[f"done_{name}"] = done
    figures["ratio"] = figures["cpu_ms_per_item_per_item_handoff"] / figures["cpu_ms_per_item_per_message_handoff"]
    return figures


def measure_runner_alone(items: int = 10_000, per_message: int = 100) -> dict[str, Any]:
    """CPU per item of each runner's run_all alone (no AWS): `items` noop items in messages of `per_message`."""
    noop = get_task(TASK)
    messages = [chunk.items for chunk in _messages("runner", items, per_message)]
    figures: dict[str, Any] = {"runner_alone": True, "items": items}
    for name, make in RUNNERS.items():
        runner = make()
        ran = 0

        def run_messages() -> None:
            nonlocal ran
            for message in messages:
                ran += len(runner.run_all(noop, message, {}, ITEM_SECONDS, Deadline(PlentyOfTime())).values)

        run_messages()  # warm up: the worker thread, first calls
        ran, runner.handoffs = 0, 0
        figures[f"cpu_ms_per_item_{name}"] = _cpu_ms_per_item(run_messages, items)
        figures[f"handoffs_{name}"] = runner.handoffs
        figures[f"done_{name}"] = ran
    figures["ratio"] = figures["cpu_ms_per_item_per_item_handoff"] / figures["cpu_ms_per_item_per_message_handoff"]
    return figures


def measure(items: int = 10_000, per_message: int = 100) -> dict[str, dict[str, Any]]:
    """{"process_message": ..., "runner_alone": ...}: CPU per item, handoffs and items done, per runner."""
    return {
        "process_message": measure_process_message(items, per_message),
        "runner_alone": measure_runner_alone(items, per_message),
    }


def _line(figures: dict[str, Any], keys: Sequence[str]) -> str:
    return json.dumps({key: round(value, 6) if isinstance(value := figures[key], float) else value for key in keys})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--per-message", type=int, default=100)
    arguments = parser.parse_args(argv)
    figures = measure(arguments.items, arguments.per_message)
    cpu = ["cpu_ms_per_item_per_message_handoff", "cpu_ms_per_item_per_item_handoff", "ratio"]
    print(_line(figures["process_message"], ["items", *cpu]))
    handoffs = ["handoffs_per_message_handoff", "handoffs_per_item_handoff"]
    print(_line(figures["runner_alone"], ["runner_alone", "items", *cpu, *handoffs]))


if __name__ == "__main__":
    main()
