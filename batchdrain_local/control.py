"""How a script drives a running local stack: its control endpoint and the client of it.

While `make local` runs, its process serves a small HTTP endpoint on 127.0.0.1 (a free
port) and describes itself in `.batchdrain/local-<API port>.json` at the project root:
its pid, the API URL and the API's token (`batchdrain status` and the other API
commands read them, batchdrain_cli.client), the AWS endpoint, the definitions file, the
control URL and the control endpoint's token. The file is removed when the stack stops; one left by a stack that was killed is
recognised (its pid is gone) and removed by the next client.

`batchdrain fire NAME` reads that file and asks the stack to fire: the stack delivers the
definition's scheduled event to its own schedule handler, the same code path as its cron
rule, so only the stack's process ever runs handlers. Requests:

    POST /fire            {"definition": NAME, "at": null or "2026-12-06T05:00Z"}
                                               -> {"batch_id", "status", "created", "summary"}
    GET  /alerts/BATCH_ID?timeout=S            -> {"alert": {...} or null after S seconds}

Every request carries the token (`Authorization: Bearer ...`); the file is readable by
its owner only.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from batchdrain_local.stack import PROJECT_DIR, LocalStack
from chalicelib import model, sources

STATE_DIR = PROJECT_DIR / ".batchdrain"
# A long poll for an alert answers at least this often, so a client's own timeout stays exact.
MAX_ALERT_WAIT_SECONDS = 30.0


class UnknownDefinitionError(Exception):
    """The running stack's definitions file has no definition of that name (the message lists those it has)."""


class StackNotRunningError(Exception):
    """No local stack answers here (the message says how to start one, or which to pick)."""


@dataclass(frozen=True)
class Fired:
    """What firing a definition did: its batch, that batch's status, and whether this fire created it."""

    batch_id: str
    status: str
    created: bool
    summary: str


def parse_slot(text: str | None) -> datetime:
    """The schedule minute to fire: `text` (ISO 8601, UTC unless it says otherwise), or this minute if None."""
    if text is None:
        return datetime.now(timezone.utc).replace(second=0, microsecond=0)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--at {text!r}: not a time; write it as 2026-12-06T05:00Z") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).replace(second=0, microsecond=0)


def fire(stack: LocalStack, name: str, definitions_file: Path | str, at: str | None = None) -> Fired:
    """Fire `name`'s schedule for the minute `at` (default: this one) through its schedule handler, as its cron rule would.

    Its S3 source's {date}-style placeholders are filled from that minute.
    """
    assert stack.app_module is not None
    definitions = stack.app_module.DEFINITIONS
    if name not in definitions:
        raise UnknownDefinitionError(f"{definitions_file} has no definition {name!r} (it has: {', '.join(definitions)})")
    slot = parse_slot(at)
    existed = stack.header(model.batch_id_for(name, slot)) is not None
    header = stack.fire_schedule(name, slot)
    batch_id, status = header["batch_id"], header.get("status", "?")
    if existed:
        summary = (
            f"batch {batch_id} exists already ({status}): a definition has one batch per schedule minute; "
            "fire again in the next one, or another minute with --at"
        )
    elif status == model.FAILED:
        summary = f"batch {batch_id} FAILED: {header.get('reason', '')}"
    elif sources.is_object_source(definitions[name].source):
        uri = header.get("source_pin", {}).get("uri") or sources.resolve_uri(definitions[name].source, slot)
        summary = f"batch {batch_id} created: {uri}, {header.get('segments', 0):,} segment(s)"
    else:
        summary = f"batch {batch_id} created: {definitions[name].source.count:,} items"
    return Fired(batch_id=batch_id, status=status, created=not existed, summary=summary)


def batcher_failed(error: Exception) -> str:
    return f"the batcher failed: {type(error).__name__}: {error}"


# -- the stack's side ------------------------------------------------------------------------


class ControlServer:
    """The endpoint `batchdrain fire` talks to, and the state file that points at it."""

    def __init__(self, stack: LocalStack, state: dict[str, Any], definitions_file: Path | str, out: Any = print) -> None:
        self.stack = stack
        self.definitions_file = definitions_file
        self.out = out
        self.token = secrets.token_urlsafe(24)
        self.state_path = state_path(state["port"])
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.state = {**state, "pid": os.getpid(), "control_url": f"http://{host}:{port}", "token": self.token}
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> "ControlServer":
        self._thread.start()
        STATE_DIR.mkdir(exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(self.state, file, indent=2)
        os.replace(temporary, self.state_path)  # a reader sees the whole file or none
        return self

    def stop(self) -> None:
        if _read_state(self.state_path).get("pid") == os.getpid():
            self.state_path.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        control = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                if self.path != "/fire":
                    return self._reply(404, {"error": f"no such endpoint {self.path}"})
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    name, at = body["definition"], body.get("at")
                    parse_slot(at)
                except ValueError as error:
                    return self._reply(400, {"error": str(error)})
                except (KeyError, TypeError, AttributeError):
                    return self._reply(400, {"error": 'the body must be {"definition": NAME, "at": ISO minute or null}'})
                try:
                    fired = fire(control.stack, name, control.definitions_file, at)
                except UnknownDefinitionError as error:
                    return self._reply(404, {"error": str(error)})
                except Exception as error:  # the batcher's failure, reported to the client; the stack keeps running
                    control.out(f"error: fire {name}: {batcher_failed(error)}")
                    return self._reply(500, {"error": batcher_failed(error)})
                control.out(f"fired: {fired.summary}")
                self._reply(200, asdict(fired))

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                url = urllib.parse.urlsplit(self.path)
                if not url.path.startswith("/alerts/"):
                    return self._reply(404, {"error": f"no such endpoint {url.path}"})
                batch_id = urllib.parse.unquote(url.path[len("/alerts/"):])
                query = urllib.parse.parse_qs(url.query)
                try:
                    timeout = min(float(query.get("timeout", ["0"])[0]), MAX_ALERT_WAIT_SECONDS)
                except ValueError:
                    return self._reply(400, {"error": "timeout must be a number of seconds"})
                try:
                    alert = control.stack.wait_for_alert(batch_id, timeout=max(timeout, 0.0))
                except TimeoutError:
                    alert = None
                self._reply(200, {"alert": alert})

            def _authorized(self) -> bool:
                if secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {control.token}"):
                    return True
                self._reply(403, {"error": "wrong or missing token (see the stack's state file)"})
                return False

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def state_path(api_port: int) -> Path:
    return STATE_DIR / f"local-{api_port}.json"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the client's side -----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stacks() -> dict[int, dict[str, Any]]:
    """The local stacks running here, by API port; state files of stacks that were killed are removed."""
    stacks = {}
    for path in sorted(STATE_DIR.glob("local-*.json")):
        state = _read_state(path)
        if not state.get("pid") or not _alive(int(state["pid"])):
            path.unlink(missing_ok=True)
            continue
        stacks[int(state["port"])] = state
    return stacks


def find_stack(port: int | None = None) -> dict[str, Any]:
    """The running stack on API port `port`, or the only one running; StackNotRunningError says why not."""
    stacks = running_stacks()
    if port is not None:
        if port not in stacks:
            running = f" (running: port {', '.join(map(str, stacks))})" if stacks else ""
            raise StackNotRunningError(f"no local stack on port {port}{running}; start one with `make local PORT={port}`")
        return stacks[port]
    if not stacks:
        raise StackNotRunningError("no local stack is running here; start one with `make local`")
    if len(stacks) > 1:
        raise StackNotRunningError(f"local stacks run on ports {', '.join(map(str, stacks))}: pick one with --port")
    return next(iter(stacks.values()))


def request(state: dict[str, Any], method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """One request to a stack's control endpoint: (HTTP status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {state['token']}", "Content-Type": "application/json"}
    call = urllib.request.Request(state["control_url"] + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError) as error:
        raise StackNotRunningError(f"the local stack on port {state['port']} does not answer ({error}); is it stopping?") from None
