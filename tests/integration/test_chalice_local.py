"""`chalice local --stage local` serves the HTTP API against the local stack's moto server, to the stack's token."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, token: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_chalice_local_serves_batch_headers_from_the_stack(start_stack):
    # A shipped task: chalice local imports the app in its own process, without test tasks.
    stack = start_stack(count=100, items_per_message=50, task_name="sleep")
    batch_id = stack.fire_schedule("nightly")["batch_id"]
    stack.wait_for_alert(batch_id, timeout=60)
    port = free_port()
    server = stack.start_chalice_local(port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"{base}/batches/{batch_id}", stack.api_token)
                break
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "chalice local did not start within 30 s"
                time.sleep(0.3)

        assert status == 200
        assert body["batch_id"] == batch_id and body["status"] == "COMPLETED" and body["total_items"] == 100
        assert "pk" not in body and "sk" not in body
        assert get(f"{base}/batches/no-such-batch", stack.api_token) == (404, {"error": {"field": "batch_id", "message": "no batch has this id"}})
        assert get(f"{base}/batches/{batch_id}")[0] == 401  # the local stage: API_AUTH=token
    finally:
        server.terminate()
        server.wait(timeout=10)
