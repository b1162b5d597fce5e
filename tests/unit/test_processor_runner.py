"""The processor's TaskRunner on its own: one handoff per message, the deadline checked before each item (invariant 9).

No AWS here: `run_all` gets a message's pending items and a Deadline, and reports what
ran (value or exception, and how long), what timed out and what never started.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from chalicelib.deadline import Deadline
from chalicelib.processor import ItemTimeout, TaskRunner, task_runner


class FakeContext:
    """A Lambda context whose remaining time only the test (or a task, with `spend`) moves."""

    def __init__(self, left_ms: int) -> None:
        self.left_ms = left_ms

    def spend(self, ms: int) -> None:
        self.left_ms -= ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.left_ms)


class Recorder:
    """A task that records the items it started (and their threads); items can hang, raise, or spend time."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.threads: dict[int, threading.Thread] = {}
        self.started_at: dict[int, float] = {}  # time.monotonic()
        self.hang: dict[int, threading.Event] = {}  # item -> returns only once the event is set
        self.raises: dict[int, BaseException] = {}
        self.spends: tuple[FakeContext, int] | None = None  # each item spends this many ms of that context

    def __call__(self, item: int, options: Any) -> str:
        self.started.append(item)
        self.threads[item] = threading.current_thread()
        self.started_at[item] = time.monotonic()
        if item in self.hang:
            self.hang[item].wait(30)
        if self.spends:
            context, ms = self.spends
            context.spend(ms)
        if item in self.raises:
            raise self.raises[item]
        return f"result {item}"


def items(*indices: int) -> list[tuple[int, int]]:
    return [(index, index) for index in indices]


PLENTY = FakeContext(600_000)  # ten minutes left, always


def test_a_message_of_50_items_is_one_handoff_to_one_worker():
    runner, task = TaskRunner(), Recorder()

    runs = runner.run_all(task, items(*range(50)), {}, 0.01, Deadline(PLENTY))

    assert runner.handoffs == 1
    assert runs.values == {index: f"result {index}" for index in range(50)}
    assert task.started == list(range(50))
    (worker,) = set(task.threads.values())
    assert worker is not threading.current_thread()
    assert (runs.errors, runs.untouched) == ({}, [])
    assert set(runs.seconds) == set(range(50))


def test_without_a_deadline_items_run_inline_and_no_thread_starts():
    runner, task = TaskRunner(), Recorder()
    before = set(threading.enumerate())

    runs = runner.run_all(task, items(*range(5)), {}, 0.01, Deadline(None))

    assert runner.handoffs == 0
    assert set(task.threads.values()) == {threading.current_thread()}
    assert set(threading.enumerate()) - before == set()
    assert set(runs.values) == set(runs.seconds) == set(range(5))


def test_a_task_exception_fails_only_its_item():
    runner, task = TaskRunner(), Recorder()
    task.raises[1] = ValueError("item 1 failed on purpose")

    runs = runner.run_all(task, items(0, 1, 2), {}, 0.01, Deadline(PLENTY))

    assert set(runs.values) == {0, 2}
    assert list(runs.errors) == [1] and runs.errors[1] is task.raises[1]
    assert runs.untouched == []
    assert set(runs.seconds) == {0, 1, 2}


def test_an_error_that_is_not_a_task_failure_stops_the_run_and_reaches_the_caller():
    class Interrupted(BaseException):
        pass

    runner, task = TaskRunner(), Recorder()
    task.raises[1] = Interrupted()

    with pytest.raises(Interrupted):
        runner.run_all(task, items(0, 1, 2), {}, 0.01, Deadline(PLENTY))

    assert task.started == [0, 1]  # as before the runner changed: nothing after it starts


def test_items_the_deadline_does_not_allow_stay_untouched_and_the_first_always_starts():
    context = FakeContext(1_000)  # 750 ms to use after the margin
    runner, task = TaskRunner(), Recorder()
    task.spends = (context, 200)

    runs = runner.run_all(task, items(*range(5)), {}, 0.3, Deadline(context))

    # 750 ms allows item 0, 550 ms item 1, 350 ms item 2; 150 ms is short of 300 ms for item 3
    assert task.started == [0, 1, 2]
    assert runs.untouched == [3, 4]
    assert runs.errors == {}
    assert set(runs.seconds) == {0, 1, 2}

    runs = TaskRunner().run_all(Recorder(), items(7, 8), {}, 10.0, Deadline(FakeContext(1_000)))

    assert set(runs.values) == {7}  # 10 s expected, 750 ms left: the invocation's first item starts all the same
    assert runs.untouched == [8]


def test_a_result_that_arrives_after_the_caller_gave_up_is_ignored_and_nothing_more_starts():
    runner, task = TaskRunner(), Recorder()
    task.hang[1] = threading.Event()

    started = time.monotonic()
    runs = runner.run_all(task, items(0, 1, 2, 3), {}, 0.0, Deadline(FakeContext(400)))  # 300 ms to use
    returned = time.monotonic()

    assert runner.handoffs == 1
    assert runs.values == {0: "result 0"}
    assert list(runs.errors) == [1] and isinstance(runs.errors[1], ItemTimeout)
    assert runs.untouched == [2, 3]
    hung_at = task.started_at[1]
    assert started + 0.3 - hung_at - 0.01 <= runs.seconds[1] <= returned - hung_at + 0.01  # until the caller gave up
    given_up = (dict(runs.values), dict(runs.errors), dict(runs.seconds), list(runs.untouched))

    worker = task.threads[1]
    task.hang[1].set()  # its result ("result 1") comes now, after the caller gave up
    worker.join(10)

    assert not worker.is_alive()  # the abandoned worker exits once its call returns
    assert task.started == [0, 1]  # it started nothing after the caller gave up
    assert (runs.values, runs.errors, runs.seconds, runs.untouched) == given_up

    again = runner.run_all(task, items(2, 3), {}, 0.0, Deadline(PLENTY))

    assert set(again.values) == {2, 3}
    assert {task.threads[2], task.threads[3]} - {worker, threading.current_thread()}  # a fresh worker
    assert runner.handoffs == 2


def test_a_single_call_still_runs_bounded_by_its_timeout():
    runner, task = TaskRunner(), Recorder()

    assert runner.run(task, 4, {}, 5.0) == "result 4"
    assert runner.run(task, 5, {}, None) == "result 5"  # inline
    assert task.threads[5] is threading.current_thread() is not task.threads[4]

    task.hang[6] = threading.Event()
    with pytest.raises(ItemTimeout):
        runner.run(task, 6, {}, 0.1)
    task.hang[6].set()


def test_each_thread_has_its_own_runner():
    mine = task_runner()
    theirs: list[TaskRunner] = []
    thread = threading.Thread(target=lambda: theirs.append(task_runner()))
    thread.start()
    thread.join()

    assert task_runner() is mine
    assert theirs[0] is not mine
