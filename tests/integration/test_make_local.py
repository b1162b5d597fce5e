"""`make local` driven by a script: `batchdrain fire`, standard input, PORT=, one-line errors, no orphans.

One stack runs for the whole module (as docs/local-stack.md starts it, on a free port);
the last test kills it with SIGKILL.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from batchdrain_local import control
from batchdrain_local.stack import PROJECT_DIR
from batchdrain_local.up import port_in_use
from tests.integration.test_demo import user_environment

# Commands docs/local-stack.md shows, run here as written but for the port: each test picks
# a free one (PORT=, --port), so a stack of the developer's own on 8000 is left alone.
MAKE_LOCAL = "make local DEFINITIONS=docs/local-stack/visits.json UPLOAD=docs/local-stack/visits.jsonl SAMPLE_DATA=1"
FIRE_AND_WAIT = "batchdrain fire count-visits --wait"
FIRE_AT = "batchdrain fire hourly-sample --at 2026-12-06T05:00Z"
FIRE_UNKNOWN = "batchdrain fire nosuch"
MAKE_LOCAL_UNKNOWN = "make local FIRE=nosuch"
MAKE_LOCAL_AGAIN = "make local"
DOCUMENTED = [MAKE_LOCAL, FIRE_AND_WAIT, FIRE_AT, FIRE_UNKNOWN, MAKE_LOCAL_UNKNOWN, MAKE_LOCAL_AGAIN]
BATCHDRAIN = str(Path(sys.executable).parent / "batchdrain")  # the console script `make setup` installs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    return not port_in_use(port)


def processes_naming(port: int) -> list[str]:
    """Command lines of the running processes (zombies aside) that name `port` as theirs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in argv if word]
        if state != "Z" and any(word == str(port) for word in words) and any("--port" in word or "PORT=" in word for word in words):
            found.append(" ".join(words))
    return found


def on_port(command: str, port: int) -> list[str]:
    """The documented command with the test's port: `PORT=` for make, `--port` for batchdrain."""
    words = command.split()
    return words + ([f"PORT={port}"] if words[0] == "make" else ["--port", str(port)])


def batchdrain(command: str, port: int, timeout: float = 120) -> subprocess.CompletedProcess:
    words = on_port(command, port)
    return subprocess.run([BATCHDRAIN, *words[1:]], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=timeout)


def make(command: str, port: int, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(on_port(command, port), cwd=PROJECT_DIR, env=user_environment(), capture_output=True, text=True, timeout=timeout)


class RunningStack:
    """`make local ...` in the background: its output, line by line, and its standard input."""

    def __init__(self, command: str, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            on_port(command, port), cwd=PROJECT_DIR, env=user_environment(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._new.put(line.rstrip("\n"))

    def mark(self) -> int:
        """How many lines the stack has printed so far: wait_for(..., since=mark()) sees only later ones."""
        while True:
            try:
                self.lines.append(self._new.get_nowait())
            except queue.Empty:
                return len(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90, since: int = 0) -> re.Match:
        """The first line from line `since` on (seen so far or to come) matching `pattern`."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for line in self.lines[seen:]:
                match = re.search(pattern, line)
                if match:
                    return match
            seen = len(self.lines)
            try:
                self.lines.append(self._new.get(timeout=max(0.05, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines)) from None

    def stack_pid(self) -> int:
        """The stack's own process (make's child)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def stack():
    running = RunningStack(MAKE_LOCAL, free_port())
    try:
        running.wait_for("^fire a batch:")
        yield running
    finally:
        running.stop()


def test_the_api_url_is_printed_once_it_answers_and_how_the_cli_reaches_it(stack):
    (url,) = stack.wait_for(r"^API: +(http://127\.0\.0\.1:\d+)/batches/<batch_id>$").groups()
    (token,) = stack.wait_for(
        rf"^CLI: +batchdrain status <batch_id> --port {stack.port} \(talks to this stack; elsewhere: "
        rf"BATCHDRAIN_API_URL={re.escape(url)} BATCHDRAIN_API_TOKEN=(\S+)\)$"
    ).groups()

    assert url == f"http://127.0.0.1:{stack.port}"
    assert control.find_stack(stack.port)["api_token"] == token
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"{url}/batches/no-such-batch", timeout=5)
    assert answer.value.code == 401  # the local stage: API_AUTH=token
    call = urllib.request.Request(f"{url}/batches/no-such-batch", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(call, timeout=5)
    assert answer.value.code == 404 and json.loads(answer.value.read())["error"]["field"] == "batch_id"


def test_the_users_object_is_uploaded_and_sample_data_leaves_it_as_it_is(stack):
    (uri,) = stack.wait_for(r"^upload: +docs/local-stack/visits.jsonl -> (s3://my-input/visits/\S+/visits.jsonl) \(5,154 bytes\)$").groups()

    stack.wait_for(rf"^sample data: +{re.escape(uri)} exists: left as it is \(sample data never goes over an object\)$")
    assert not any(line.startswith("sample data:") and "uploaded" in line for line in stack.lines)


def test_batchdrain_fire_runs_the_definition_on_the_users_data_and_waits_for_its_alert(stack):
    result = batchdrain(FIRE_AND_WAIT, stack.port)

    assert result.returncode == 0, result.stdout + result.stderr
    summary, subject, *message = result.stdout.splitlines()
    batch_id = re.fullmatch(r"batch (count-visits-\S+) created: s3://my-input/visits/\S+/visits.jsonl, 1 segment\(s\)", summary).group(1)
    assert subject == f"alert: batch {batch_id} completed: 120 items in {json.loads(chr(10).join(message))['duration_seconds']:.0f} s"
    assert json.loads("\n".join(message))["totals"] == {"items": 120, "succeeded": 120, "failed": 0}  # not sample data
    stack.wait_for(rf"^ALERT  batch {batch_id} completed: 120 items")


def test_a_batch_whose_source_is_not_there_ends_failed_and_wait_exits_3(stack):
    result = batchdrain("batchdrain fire count-visits --at 2026-12-05T06:00Z --wait", stack.port)

    assert result.returncode == 3, result.stdout + result.stderr
    summary, subject, *message = result.stdout.splitlines()
    assert summary == "batch count-visits-2026-12-05T06:00Z FAILED: s3://my-input/visits/2026-12-05/visits.jsonl: not found"
    assert subject == f"alert: {summary}"
    assert json.loads("\n".join(message))["status"] == "FAILED"


def test_a_schedule_minute_is_one_batch_however_often_it_is_fired(stack):
    first, again = batchdrain(FIRE_AT, stack.port), batchdrain(FIRE_AT, stack.port)

    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == "batch hourly-sample-2026-12-06T05:00Z created: 500 items\n"
    assert again.stdout.startswith("batch hourly-sample-2026-12-06T05:00Z exists already (")


def test_a_definition_name_on_standard_input_fires_it(stack):
    assert stack.process.stdin is not None
    since = stack.mark()
    stack.process.stdin.write("hourly-sample\n")
    stack.process.stdin.flush()

    (batch_id,) = stack.wait_for(r"^fired: batch (hourly-sample-\S+) created: 500 items$", since=since).groups()
    assert batch_id != "hourly-sample-2026-12-06T05:00Z"


def test_firing_an_unknown_definition_is_one_line_naming_the_files_definitions(stack):
    result = batchdrain(FIRE_UNKNOWN, stack.port)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: docs/local-stack/visits.json has no definition 'nosuch' (it has: count-visits, hourly-sample)\n"


def test_a_busy_port_is_one_line_and_leaves_nothing_running(stack):
    before = processes_naming(stack.port)

    result = make(MAKE_LOCAL_AGAIN, stack.port)

    assert result.returncode != 0 and result.stdout == ""
    error, trailer = result.stderr.splitlines()
    assert error == f"error: port {stack.port} is in use (another local stack?); pick another with PORT={stack.port + 1}"
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: local\] Error 2", trailer)
    assert processes_naming(stack.port) == before  # the running stack's, nothing more


def test_an_unknown_fire_is_one_line_and_nothing_starts():
    port = free_port()

    result = make(MAKE_LOCAL_UNKNOWN, port)

    assert result.returncode != 0 and result.stdout == ""
    error, trailer = result.stderr.splitlines()
    assert error == "error: chalicelib/batches.json: no definition 'nosuch' (it has: nightly)"
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: local\] Error 1", trailer)
    assert port_is_free(port) and processes_naming(port) == []


def documented_script() -> str:
    """The script docs/local-stack.md shows (its one bash block)."""
    (script,) = re.findall(r"```bash\n(.*?)```", (PROJECT_DIR / "docs" / "local-stack.md").read_text(), re.S)
    return script


def test_the_documented_script_fires_a_batch_and_its_kill_stops_everything(tmp_path):
    port, log = free_port(), tmp_path / "stack.log"
    script = (
        documented_script()
        .replace("make local ", f"make local PORT={port} ")
        .replace("batchdrain fire count-visits --wait", f"batchdrain fire count-visits --wait --port {port}")
        .replace("stack.log", str(log))
    )
    environment = {**user_environment(), "PATH": f"{Path(BATCHDRAIN).parent}{os.pathsep}{os.environ['PATH']}"}

    result = subprocess.run(["bash", "-c", script], cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=180)

    assert re.match(r"batch count-visits-\S+ created: .*\nalert: batch count-visits-\S+ completed: 120 items", result.stdout), (
        result.stdout + result.stderr + log.read_text()
    )
    assert port_is_free(port) and processes_naming(port) == []  # SIGTERM to make stopped the stack and chalice local
    assert not control.state_path(port).exists()


def test_sigkill_of_the_stack_leaves_nothing_listening_and_fire_says_no_stack_runs(stack):
    """Last: it ends the module's stack."""
    pid = stack.stack_pid()
    assert not port_is_free(stack.port)

    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + 10
    while not port_is_free(stack.port) or processes_naming(stack.port):
        assert time.monotonic() < deadline, f"still running after 10 s: {processes_naming(stack.port)}"
        time.sleep(0.1)
    result = batchdrain(FIRE_AND_WAIT, stack.port)
    assert (result.returncode, result.stderr) == (1, f"error: no local stack on port {stack.port}; start one with `make local PORT={stack.port}`\n")
    assert not control.state_path(stack.port).exists()  # the killed stack's file, removed by the client
