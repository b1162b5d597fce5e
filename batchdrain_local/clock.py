"""An accelerated clock that fires each definition's schedule at its real slots.

Simulated time runs N times faster than the wall clock; the slots come from
`chalicelib.schedules.next_fire`, the same table of cron fields the definitions are
checked against.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from chalicelib.schedules import next_fire


class AcceleratedClock:
    """Simulated UTC time running `speed` times faster than the wall clock, firing schedules at their slots.

    `fire(name, slot)` is called for each definition whose expression has a slot
    between the previous tick and now, in slot order.
    """

    def __init__(
        self,
        schedules: dict[str, str],
        fire: Callable[[str, datetime], None],
        speed: float,
        start: datetime | None = None,
        tick: float = 0.2,
    ) -> None:
        self.schedules = schedules
        self.fire = fire
        self.speed = speed
        self.tick = tick
        self._origin = (start or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self._wall_origin: float | None = None
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: list[tuple[str, datetime]] = []

    def now(self) -> datetime:
        elapsed = 0.0 if self._wall_origin is None else time.monotonic() - self._wall_origin
        return self._origin + timedelta(seconds=elapsed * self.speed)

    def start(self) -> None:
        self._wall_origin = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="accelerated-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        due = {name: next_fire(expression, self._origin) for name, expression in self.schedules.items()}
        while not self.stopping.wait(self.tick):
            now = self.now()
            for name, slot in sorted(due.items(), key=lambda entry: entry[1]):
                while slot <= now and not self.stopping.is_set():
                    self.fired.append((name, slot))
                    self.fire(name, slot)
                    slot = next_fire(self.schedules[name], slot)
                due[name] = slot
