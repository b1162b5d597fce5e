"""The progress line of a running batch, as `make demo` and `batchdrain wait` draw it, and its summary.

One line from a batch as the API shows it (GET /batches/{id}: status, totals and
`progress`): redrawn in place on a terminal, with a bar; else printed each time the
status or the percent changes. The figures are the API's estimate (chalicelib.api.progress).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

BAR_WIDTH = 24


class Progress:
    """The progress a wait shows: one line redrawn with `\\r` on a terminal, else a line per change."""

    def __init__(self, terminal: bool, out: Callable[[str], None] | None = None) -> None:
        self.terminal = terminal
        self.out = out or (lambda line: print(line, flush=True))
        self.last: tuple[Any, ...] | None = None
        self.width = 0

    def update(self, batch: Mapping[str, Any]) -> None:
        progress = batch.get("progress") or {}
        line = self.line(batch, progress)
        if self.terminal:
            sys.stdout.write("\r" + line.ljust(self.width))
            sys.stdout.flush()
            self.width = max(self.width, len(line))
        elif (batch.get("status"), progress.get("percent")) != self.last:
            self.out(line)
        self.last = (batch.get("status"), progress.get("percent"))

    def finish(self) -> None:
        """Ends the redrawn line (on a terminal), so what follows starts on a line of its own."""
        if self.terminal and self.width:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.width = 0

    def end(self, batch: Mapping[str, Any]) -> None:
        self.finish()
        self.out(summary(batch))

    def line(self, batch: Mapping[str, Any], progress: Mapping[str, Any]) -> str:
        percent = float(progress.get("percent", 0.0))
        done, elapsed = int(progress.get("items_done_estimate", 0)), float(progress.get("elapsed_seconds") or 0)
        rate = f"{done / elapsed:,.0f} items/s" if elapsed > 0 else "- items/s"
        eta = progress.get("eta_seconds")
        filled = int(BAR_WIDTH * percent / 100)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if self.terminal else ""
        return (
            f"{bar}{batch['batch_id']} {batch.get('status', '?')} {percent:5.1f}%  "
            f"{done:,}/{int(batch.get('total_items', 0)):,} items  {rate}  ETA {duration(eta) if eta is not None else '-'}"
        )


def summary(batch: Mapping[str, Any]) -> str:
    """`batch ID STATUS: N items, S succeeded, F failed (attempt A)`: one line."""
    attempt = int(batch.get("attempt", 1) or 1)
    return (
        f"batch {batch['batch_id']} {batch.get('status', '?')}: {int(batch.get('total_items', 0)):,} items, "
        f"{int(batch.get('succeeded', 0)):,} succeeded, {int(batch.get('failed', 0)):,} failed"
        + (f" (attempt {attempt})" if attempt > 1 else "")
    )


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 5 s`, `2 h 3 min`."""
    if seconds is None:
        return "?"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
