"""The API commands against a running local stack, as `make local` runs it: fire, `wait --json`, `status`, `submit --items-file`.

The stack, `chalice local` (the local stage: API_AUTH=token) and the control endpoint
start as batchdrain_local.up starts them; the CLI runs as its own process
(`python -m batchdrain_cli`) and finds the stack by its state file and `--port`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from batchdrain_local import control, up
from batchdrain_local.stack import PROJECT_DIR
from tests.integration.test_chalice_local import free_port


def batchdrain(*argv: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("BATCHDRAIN_API_")}
    return subprocess.run(
        [sys.executable, "-m", "batchdrain_cli", *argv], cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=60
    )


def test_fire_then_wait_json_then_status_through_the_local_api(start_stack, tmp_path):
    # A shipped task: chalice local imports the app in its own process, without test tasks.
    stack = start_stack(count=300, items_per_message=50, task_name="sleep")
    port = free_port()
    api = stack.start_chalice_local(port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    controller = None
    try:
        up._wait_for_api(api, up._drain(api), port)
        state = {"port": port, "api_url": f"http://127.0.0.1:{port}", "api_token": stack.api_token}
        controller = control.ControlServer(stack, state, "batches.json").start()

        fired = batchdrain("fire", "nightly", "--port", str(port))
        assert fired.returncode == 0, fired.stderr
        batch_id = re.fullmatch(r"batch (nightly-\S+) created: 300 items\n", fired.stdout).group(1)

        waited = batchdrain("wait", batch_id, "--json", "--timeout", "30", "--port", str(port))
        assert (waited.returncode, waited.stderr) == (0, ""), waited.stdout
        answer = json.loads(waited.stdout)
        assert (answer["done"], answer["batch"]["status"], answer["batch"]["succeeded"]) == (True, "COMPLETED", 300)
        assert answer["batch"]["progress"]["percent"] == 100.0

        status = batchdrain("status", batch_id, "--port", str(port))
        assert (status.returncode, status.stderr) == (0, "")
        assert status.stdout.splitlines()[0] == f"batch {batch_id} COMPLETED: 300 items, 300 succeeded, 0 failed"

        # Items inline: the stack's own inbox (INBOX_URI) holds them, the batch runs them as an s3-jsonl source.
        items = tmp_path / "inline.jsonl"
        items.write_text("".join(json.dumps({"id": n, "value": 0}) + "\n" for n in range(12)))
        submitted = batchdrain("submit", "nightly", "--items-file", str(items), "--wait", "--json", "--timeout", "30", "--port", str(port))
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        inline = json.loads(submitted.stdout)["batch"]
        assert (inline["status"], inline["total_items"], inline["succeeded"]) == ("COMPLETED", 12, 12)

        refused = batchdrain("status", batch_id, "--port", str(port), "--token", "not-the-stacks-token-0123")
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.startswith("error: authorization: must be 'Bearer <API_TOKEN>'") and refused.stderr.count("\n") == 1
    finally:
        if controller is not None:
            controller.stop()
        up._stop_group(api)
