"""Run a command that ends with the process that started it.

    python -m batchdrain_local.lifeline PARENT_PID -- COMMAND [ARG ...]

The local stack starts `chalice local` through this, so that however the stack's process
ends (Ctrl-C, SIGTERM, or `kill -9`, which it cannot catch) nothing it started keeps
running or listening on its port. On Linux the command is armed with
prctl(PR_SET_PDEATHSIG, SIGKILL) here, in a fresh one-thread process, and then exec'd (the
setting survives exec). Doing it in subprocess's preexec_fn instead would run Python
between fork and exec in the stack's process, which has many threads: subprocess warns
that may deadlock. Elsewhere this process stays as the command's parent, and kills it
when PARENT_PID is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5


def command(parent_pid: int, argv: list[str]) -> list[str]:
    """The command line that runs `argv` tied to `parent_pid` (this module, with this Python)."""
    return [sys.executable, "-m", "batchdrain_local.lifeline", str(parent_pid), "--", *argv]


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m batchdrain_local.lifeline PARENT_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    parent, argv = int(args[0]), args[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"lifeline: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 1
        if os.getppid() != parent:  # the parent ended before the signal was armed
            return 1
        os.execvp(argv[0], argv)
    child = subprocess.Popen(argv)
    while child.poll() is None:
        if os.getppid() != parent:
            child.kill()
            return child.wait()
        time.sleep(POLL_SECONDS)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
