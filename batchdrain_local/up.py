"""`make local`: the local stack and `chalice local`, in the foreground until stopped.

    python -m batchdrain_local up [--port 8000] [--definitions FILE] [--fire NAME ...]
        [--upload FILE[=s3://bucket/key] ...] [--sample-data] [--definition NAME --items N --k K --scale S]

Runs the definitions file as written (batchdrain_local.definitions says which file, and
how overrides work). Before anything starts it checks what a user can get wrong, each a
one-line error and a non-zero exit with nothing left running: the port is free, the
file is valid, every `--fire` name is defined. The API URL is printed once it answers.

Batches are fired by `batchdrain fire NAME` from another terminal or a script (through
the control endpoint, batchdrain_local.control), by `--fire NAME` at start, or by a
definition name on a line of standard input (a terminal or a pipe). Ctrl-C, SIGTERM
and SIGHUP stop everything; `chalice local` also ends if this process is killed with
SIGKILL (batchdrain_local.lifeline).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from batchdrain_local import control, data
from batchdrain_local import definitions as files
from batchdrain_local.stack import IGNORED_SETTINGS, LocalStack, StackOptions, shell_settings
from chalicelib.errors import BatchdrainError

LABEL = 14  # the width of the labels the stack prints its facts under
API_START_SECONDS = 60.0


class UsageError(BatchdrainError):
    """Something the user asked for cannot run (a busy port, an unknown definition): one line, exit 2."""


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (bound as an HTTP server binds, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_port(port: int) -> None:
    if port_in_use(port):
        raise UsageError(f"port {port} is in use (another local stack?); pick another with PORT={port + 1}")


def say(label: str, text: str) -> None:
    print(f"{label + ':':<{LABEL}}{text}", flush=True)


def up(arguments: argparse.Namespace) -> int:
    """See the module docstring. Returns the exit status."""
    check_port(arguments.port)
    path = files.definitions_file(arguments.definitions)
    document = files.read_document(path)
    for name in [*arguments.fire, *([arguments.definition] if arguments.definition else [])]:
        files.pick(document, files.shown(path), name)  # an unknown name: one line, before anything starts
    uploads = [data.Upload.parse(text) for text in arguments.upload]
    overrides = files.Overrides(None if arguments.sample_data else arguments.items, arguments.k, arguments.scale)
    document, changes, note = files.with_overrides(document, path, arguments.definition, overrides)
    _tie_to_make()
    stopping = threading.Event()
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda *_: stopping.set())
    ignored = shell_settings(os.environ)
    if ignored:
        print(IGNORED_SETTINGS.format(", ".join(ignored)), flush=True)
    with files.loadable(document, path, changes) as loaded:
        with LocalStack(StackOptions(definitions_file=loaded, processor_concurrency=arguments.concurrency)) as stack:
            return _serve(stack, arguments, path, changes, note, uploads, stopping)


def _serve(
    stack: LocalStack,
    arguments: argparse.Namespace,
    path: Path,
    changes: list[files.Change],
    note: str | None,
    uploads: list[data.Upload],
    stopping: threading.Event,
) -> int:
    assert stack.app_module is not None
    definitions = stack.app_module.DEFINITIONS
    stack.on_alert = lambda alert: print(f"ALERT  {alert['subject']}\n       {json.dumps(alert['message'])}", flush=True)
    api = stack.start_chalice_local(arguments.port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api_log = _drain(api)
    controller = None
    try:  # from here on, whatever happens stops chalice local too
        say("definitions", f"{files.shown(path)}: {', '.join(definitions)}")
        if note:
            print(note, flush=True)
        for change in changes:
            print(change.line(named=len(definitions) > 1), flush=True)
        say("AWS endpoint", f"{stack.endpoint_url} (moto server: S3, DynamoDB, SQS, SNS; it starts empty)")
        data.prepare(
            stack.client("s3"), definitions, datetime.now(timezone.utc).replace(second=0, microsecond=0), say,
            uploads=uploads, name=arguments.definition, sample_data=arguments.sample_data,
            objects=arguments.objects, lines=arguments.items or data.DEFAULT_LINES, bad_lines=arguments.bad_lines,
        )
        _wait_for_api(api, api_log, arguments.port)
        api_url = f"http://127.0.0.1:{arguments.port}"
        controller = control.ControlServer(
            stack,
            {"port": arguments.port, "api_url": api_url, "api_token": stack.api_token, "aws_endpoint": stack.endpoint_url,
             "definitions": str(path.resolve())},
            files.shown(path),
        ).start()
        say("API", f"{api_url}/batches/<batch_id>")
        port = f" --port {arguments.port}" if arguments.port != 8000 else ""
        say("CLI", f"batchdrain status <batch_id>{port} (talks to this stack; elsewhere: "
            f"BATCHDRAIN_API_URL={api_url} BATCHDRAIN_API_TOKEN={stack.api_token})")
        if arguments.clock_speed:
            clock = stack.start_clock(arguments.clock_speed)
            say("clock", f"x{arguments.clock_speed:g}, simulated time starts {clock.now():%Y-%m-%dT%H:%MZ}")
        say("fire a batch", f"batchdrain fire NAME{port} (or a name on standard input); Ctrl-C stops everything")
        for name in arguments.fire:
            _fire(stack, name, files.shown(path))
        threading.Thread(target=_read_names, args=(lambda name: _fire(stack, name, files.shown(path)),), daemon=True).start()
        while not stopping.is_set() and api.poll() is None:
            stopping.wait(0.5)
        if api.poll() is not None and not stopping.is_set():
            raise UsageError(_api_stopped(api, api_log))
        return 0
    finally:
        if controller is not None:
            controller.stop()
        _stop_group(api)


def _fire(stack: LocalStack, name: str, path: str) -> None:
    try:
        print(f"fired: {control.fire(stack, name, path).summary}", flush=True)
    except control.UnknownDefinitionError as error:
        print(f"error: {error}", flush=True)
    except Exception as error:  # the batcher's own failure: said, and the stack keeps running
        print(f"error: fire {name}: {control.batcher_failed(error)}", flush=True)


def _read_names(fire: Callable[[str], None]) -> None:
    """Fire each definition named on a line of standard input, until it ends (a pipe, a file or a terminal)."""
    if sys.stdin is None:
        return
    descriptor = sys.stdin.fileno() if not sys.stdin.closed else -1
    terminal = descriptor >= 0 and os.isatty(descriptor)
    while True:
        if terminal and os.tcgetpgrp(descriptor) != os.getpgrp():
            time.sleep(1.0)  # in the background: reading the terminal would stop the whole stack (SIGTTIN)
            continue
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            return
        if not line:
            return
        if line.strip():
            fire(line.strip())


def _drain(process: subprocess.Popen) -> deque[str]:
    """The last lines `process` wrote to its standard error, read as it writes them (a full pipe would block it)."""
    lines: deque[str] = deque(maxlen=20)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=read, name="chalice-local-log", daemon=True).start()
    return lines


def _wait_for_api(api: subprocess.Popen, api_log: deque[str], port: int) -> None:
    """Return once chalice local answers on `port`; a UsageError if it stops or does not answer in time."""
    deadline = time.monotonic() + API_START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/batches/-", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # 404 for that batch: the API answers
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if api.poll() is not None:
            raise UsageError(_api_stopped(api, api_log))
        if time.monotonic() > deadline:
            raise UsageError(f"chalice local did not answer on port {port} within {API_START_SECONDS:.0f} s")
        time.sleep(0.2)


def _api_stopped(api: subprocess.Popen, api_log: deque[str]) -> str:
    """Why chalice local stopped: the signal that killed it, or the last line it wrote."""
    if api.returncode < 0:
        return f"chalice local was killed (signal {-api.returncode})"
    time.sleep(0.2)  # its last words, read by _drain
    lines = [line for line in api_log if line.strip()]
    return f"chalice local stopped (exit {api.returncode}): {lines[-1] if lines else '(no output)'}"


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and every process it started."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _tie_to_make() -> None:
    """Under make, end with make: `kill -9` of `make local` then leaves nothing running either (Linux)."""
    if os.environ.get("MAKELEVEL") and sys.platform.startswith("linux"):
        import ctypes

        from batchdrain_local.lifeline import PR_SET_PDEATHSIG

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
