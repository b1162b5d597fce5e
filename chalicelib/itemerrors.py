"""What an item's failure says: its error with where it was raised, and its traceback for the log.

An item's error is kept on its row and in `failures.jsonl` as one bounded line
(`model.MAX_ERROR_TEXT`): the exception's type and message, then the place it was raised
in the task's own code, `(at tasks/people.py:12 in upper)`. The place is the innermost
frame outside Python's library and installed packages (a `KeyError` raised inside
`json` names the task line that called it), so a reader finds the line to fix without
the log. The whole traceback (its last TRACEBACK_FRAMES frames, at most TRACEBACK_BYTES)
is logged once, by the delivery that fails the item for good (chalicelib.processor).
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from types import TracebackType

from chalicelib.model import MAX_ERROR_TEXT, bounded_error

# The log line of an item that failed for good: enough to find the fault, bounded in cost.
TRACEBACK_FRAMES = 20
TRACEBACK_BYTES = 4096
# Python's own library and installed packages: frames there are not the task's code.
_LIBRARY_DIRS = tuple(
    os.path.join(os.path.realpath(path), "")
    for path in {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def describe(error: BaseException) -> str:
    """`Type: message (at file:line in function)`, at most MAX_ERROR_TEXT characters; the place is never cut off."""
    text = f"{type(error).__name__}: {error}"
    where = last_frame(error.__traceback__)
    if where is None:
        return bounded_error(text)
    suffix = f" (at {where})"
    room = MAX_ERROR_TEXT - len(suffix)
    if room < 40:  # a place too long to leave the message room: the message first
        return bounded_error(text + suffix)
    return (text if len(text) <= room else text[: room - 3] + "...") + suffix


def last_frame(trace: TracebackType | None) -> str | None:
    """`file:line in function` of the innermost frame in the task's own code (or the innermost frame at all)."""
    frames = traceback.extract_tb(trace) if trace is not None else []
    if not frames:
        return None
    own = [frame for frame in frames if not _in_library(frame.filename)]
    frame = (own or frames)[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno} in {frame.name}"


def traceback_text(error: BaseException, caller: str | None = None) -> str:
    """The error's traceback, its last TRACEBACK_FRAMES frames, cut to its last TRACEBACK_BYTES characters.

    `caller`: the file that ran the task (the processor); its leading frames say nothing
    about the fault and are left out.
    """
    trace = error.__traceback__
    if caller is not None:
        skip = os.path.realpath(caller)
        while trace is not None and trace.tb_next is not None and os.path.realpath(trace.tb_frame.f_code.co_filename) == skip:
            trace = trace.tb_next
    text = "".join(traceback.format_exception(type(error), error, trace, limit=-TRACEBACK_FRAMES))
    return text if len(text) <= TRACEBACK_BYTES else "..." + text[-(TRACEBACK_BYTES - 3) :]


def _in_library(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_LIBRARY_DIRS)


def _short_path(filename: str) -> str:
    """The path relative to the function's code root (Lambda's LAMBDA_TASK_ROOT, or the working directory)."""
    path = os.path.realpath(filename)
    for root in (os.environ.get("LAMBDA_TASK_ROOT"), os.getcwd()):
        if root:
            base = os.path.join(os.path.realpath(root), "")
            if path.startswith(base):
                return path[len(base) :]
    return filename
