"""`make demo`: the README's first command, run as a user runs it (the CLI, in its own process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from batchdrain_local.stack import PROJECT_DIR


def test_demo_runs_a_cron_batch_to_one_alert_with_the_shipped_definition():
    """The shipped definition with only its size changed: its float task options included."""
    result = subprocess.run(
        [sys.executable, "-m", "batchdrain_local", "demo", "--items", "600", "--k", "50", "--timeout", "120"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "completion alert received through SNS:" in out
    assert re.search(r"subject: +batch nightly-\S+ completed: 600 items in \d+ s", out)
    assert re.search(r"batch nightly-\S+: 600 items in [\d.]+ s \(wall time from cron event to alert\); alerts for this batch: 1$", out, re.M)
    message = json.loads(out.split("message:", 1)[1].split("\nbatch ", 1)[0])
    assert message["status"] == "COMPLETED"
    assert message["totals"] == {"items": 600, "succeeded": 600, "failed": 0}
    assert out.rstrip().splitlines()[-1].startswith("local stack stopped; demo took")
