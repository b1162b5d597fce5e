"""The API commands (`batchdrain status/list/wait/failures/redrive/cancel`) against the real app, over HTTP.

The app (app.py, its table in moto) is served on 127.0.0.1 by a small HTTP server that
hands each request to Chalice's test client, so the CLI's own urllib requests, headers
and signatures are what the app sees. The local stage's token is checked by the app;
a deployed stage's SigV4 signature is checked here, recomputed from the AWS spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import json
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
from chalice.test import Client

from batchdrain_cli import cli, client, wait
from batchdrain_local import control
from chalicelib import finalizer, processor
from chalicelib.config import Definition, Settings

from .conftest import MockedAws, create_sealed_batch, plan_batches, sqs_event
from .test_api import FAILING, SLOT, TOKEN, definition, fresh_failures, run_to_the_end  # noqa: F401 (fixtures)

BATCH_ID = "nightly-2026-11-23T06:00Z"
SECRET = "test-secret-access-key"
REFUSED = "error: authorization: must be 'Bearer <API_TOKEN>' with the local stack's token (HTTP 401)\n"


@dataclass
class Served:
    """The app on http://127.0.0.1:port: every request it received, and a hook run before each."""

    url: str
    received: list[tuple[str, str, Any, bytes]] = field(default_factory=list)
    before: Callable[[str], None] = lambda path: None


def serve(app: ModuleType, project_dir: Path) -> Iterator[Served]:
    with Client(app.app, project_dir=str(project_dir)) as test_client:
        served = Served("")

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                served.received.append((self.command, self.path, self.headers, body))
                served.before(self.path)
                answer = test_client.http.request(self.command, self.path, headers=dict(self.headers), body=body)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_POST = do_GET

        server = HTTPServer(("127.0.0.1", 0), Forward)
        served.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield served
        finally:
            server.shutdown()
            server.server_close()


def import_app(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Iterator[ModuleType]:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "5")
    monkeypatch.setenv("PROCESSOR_TIMEOUT_SECONDS", "120")
    sys.modules.pop("app", None)
    yield importlib.import_module("app")
    sys.modules.pop("app", None)


@pytest.fixture(autouse=True)
def no_api_in_the_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BATCHDRAIN_API_URL", "BATCHDRAIN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(control, "STATE_DIR", tmp_path / "state")  # no developer's stack is found
    monkeypatch.setattr(wait, "POLL_SECONDS", 0)  # each long poll answers at once; the tests move the batch
    monkeypatch.setattr(wait, "PROGRESS_POLL_SECONDS", 0)


@pytest.fixture
def local(aws: MockedAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Served]:
    """The local stage's API (token auth), named by BATCHDRAIN_API_URL and BATCHDRAIN_API_TOKEN."""
    for app in import_app(monkeypatch, API_AUTH="token", API_TOKEN=TOKEN):
        for served in serve(app, tmp_path):
            monkeypatch.setenv("BATCHDRAIN_API_URL", served.url)
            monkeypatch.setenv("BATCHDRAIN_API_TOKEN", TOKEN)
            yield served


@pytest.fixture
def deployed(aws: MockedAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Served]:
    """A deployed stage's app (IAM: API Gateway checks the signature; here the test does)."""
    for app in import_app(monkeypatch, API_AUTH="iam"):
        yield from serve(app, tmp_path)


def batchdrain(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def failed_batch(aws: MockedAws, definition: Definition, settings: Settings) -> dict[str, Any]:
    header = create_sealed_batch(definition, SLOT, settings)
    FAILING.update({5, 250, 731})
    run_to_the_end(aws, settings)
    FAILING.clear()
    return header


# -- who may call ---------------------------------------------------------------------------------


def test_a_wrong_token_is_one_line_naming_the_field_and_exit_1(local: Served, capsys):
    assert batchdrain(capsys, "status", BATCH_ID, "--token", "wrong-token-0123456789") == (1, "", REFUSED)
    assert batchdrain(capsys, "list", "--json", "--token", "wrong-token-0123456789") == (1, "", REFUSED)


def test_a_refused_request_names_the_field_the_api_named(local: Served, capsys):
    assert batchdrain(capsys, "status", "no-such-batch") == (1, "", "error: batch_id: no batch has this id (HTTP 404)\n")
    code, out, err = batchdrain(capsys, "list", "--status", "DONE")
    assert (code, out) == (1, "") and err.startswith("error: status: must be one of CREATING, SEALED, COMPLETED")


def test_without_a_url_the_running_local_stack_is_found_by_its_state_file(local: Served, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("BATCHDRAIN_API_URL")
    monkeypatch.delenv("BATCHDRAIN_API_TOKEN")
    assert batchdrain(capsys, "list") == (
        1, "", "error: no local stack is running here; start one with `make local`, or name an API with --url or BATCHDRAIN_API_URL\n"
    )
    control.STATE_DIR.mkdir()
    control.state_path(8123).write_text(json.dumps({"port": 8123, "pid": os.getpid(), "api_url": local.url, "api_token": TOKEN}))

    assert batchdrain(capsys, "list", "--json") == (0, json.dumps({"batches": [], "cursor": None}, indent=2) + "\n", "")
    assert batchdrain(capsys, "list", "--port", "8123")[0] == 0
    assert batchdrain(capsys, "list", "--port", "8124")[2] == (
        "error: no local stack on port 8124 (running: port 8123); start one with `make local PORT=8124`, "
        "or name an API with --url or BATCHDRAIN_API_URL\n"
    )


def test_an_api_that_does_not_answer_is_one_line(capsys):
    code, out, err = batchdrain(capsys, "status", BATCH_ID, "--url", "http://127.0.0.1:9", "--token", TOKEN)
    assert (code, out) == (1, "") and err.startswith("error: cannot reach the API at http://127.0.0.1:9 (") and "\n" == err[-1:]
    assert err.count("\n") == 1


# -- SigV4, for a deployed stage ----------------------------------------------------------------------


def signature_is_valid(method: str, raw_path: str, headers: Any, body: bytes, secret: str) -> bool:
    """Recompute the request's AWS4-HMAC-SHA256 signature as the spec says (API Gateway's check)."""
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=(\w+)/(\d{8})/([a-z0-9-]+)/execute-api/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        headers["Authorization"],
    )
    assert match, headers["Authorization"]
    _, day, region, signed, signature = match.groups()
    path, _, query = raw_path.partition("?")
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(path, safe="/~"),  # every service but S3: the path encoded twice
            "&".join(sorted(query.split("&"))) if query else "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed.split(";")),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/execute-api/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", headers["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (day, region, "execute-api", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)


def test_a_deployed_api_is_called_with_a_valid_sigv4_signature_for_execute_api(deployed: Served, failed_batch, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")  # what boto3 finds; a session's token is signed too
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-example")

    assert batchdrain(capsys, "status", BATCH_ID, "--url", deployed.url)[0] == 0
    assert batchdrain(capsys, "list", "--status", "COMPLETED_WITH_FAILURES", "--limit", "5", "--url", deployed.url)[0] == 0
    assert batchdrain(capsys, "redrive", BATCH_ID, "--url", deployed.url)[0] == 0

    assert [(method, path.split("?")[0]) for method, path, _, _ in deployed.received] == [
        ("GET", "/batches/nightly-2026-11-23T06:00Z"),
        ("GET", "/batches"),
        ("POST", "/batches/nightly-2026-11-23T06:00Z/redrive"),
    ]
    for method, path, headers, body in deployed.received:
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/us-east-1/execute-api/aws4_request, SignedHeaders=" in headers["Authorization"]  # AWS_DEFAULT_REGION
        assert headers["X-Amz-Security-Token"] == "session-token-example"
        assert signature_is_valid(method, path, headers, body, secret=SECRET), (method, path)
        assert not signature_is_valid(method, path + "x", headers, body, secret=SECRET)


def test_the_region_is_the_execute_api_urls_own():
    from botocore.credentials import Credentials

    api = client.Api("https://a1b2c3.execute-api.eu-west-1.amazonaws.com/api", credentials=Credentials("AKID", "SECRET"))
    headers = api._auth_headers("GET", api.url + "/batches", b"", {"Accept": "application/json"})

    assert "/eu-west-1/execute-api/aws4_request, SignedHeaders=accept;host;x-amz-date, Signature=" in headers["Authorization"]
    assert client.region_of("http://127.0.0.1:8000") == "us-east-1"  # else AWS_REGION / AWS_DEFAULT_REGION


# -- the commands -----------------------------------------------------------------------------------


def test_status_prints_the_batch_and_json_prints_the_apis_document(local: Served, aws: MockedAws, definition, settings, capsys):
    create_sealed_batch(definition, SLOT, settings)
    processor.handle_sqs_event(sqs_event(aws.work_messages()[:4]), settings)

    code, out, err = batchdrain(capsys, "status", BATCH_ID)
    assert (code, err) == (0, "")
    summary, progress, created, k, items, cost = out.splitlines()
    assert summary == f"batch {BATCH_ID} SEALED: 1,000 items, 0 succeeded, 0 failed"  # totals are counted at the end
    assert re.fullmatch(r"  progress: \d+\.\d% \(about [\d,]+ items done, a lower bound\)(, ETA .*)?", progress)
    assert re.fullmatch(r"  created:  \d{4}-\d\d-\d\dT\S+", created)
    assert k == "  K:        K=100 (pinned by items_per_message)"  # the definition's, and why
    # What its items took and what it cost so far (its stats rows): 4 chunks of 100 items ran.
    assert re.fullmatch(r"  items:    400 timed: p50 \S+ s, p99 \S+ s, max \S+ s \(each within ~9 %\)", items)
    assert re.fullmatch(r"  cost:     \$0\.0\d+ infrastructure so far \(DynamoDB \$.*\), task compute \$\S+; an estimate, within ~10 %", cost)

    code, out, _ = batchdrain(capsys, "status", BATCH_ID, "--json")
    document = json.loads(out)
    assert (code, document["batch_id"], document["status"], document["total_items"]) == (0, BATCH_ID, "SEALED", 1000)
    assert set(document["progress"]) >= {"percent", "items_done_estimate", "eta_seconds", "elapsed_seconds"}


def test_list_prints_a_page_or_every_page_and_json_is_one_document(local: Served, aws, definition, settings, capsys, clock):
    from datetime import timedelta

    for hour in range(3):
        clock.at(3600 * hour)
        create_sealed_batch(definition, SLOT + timedelta(hours=hour), settings)

    code, out, _ = batchdrain(capsys, "list", "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["nightly-2026-11-23T08:00Z", "nightly-2026-11-23T07:00Z", "(more:"]
    assert out.splitlines()[0].split()[1:4] == ["SEALED", "1,000", "items"]

    code, out, _ = batchdrain(capsys, "list", "--limit", "2", "--all", "--json")
    document = json.loads(out)
    assert [batch["batch_id"] for batch in document["batches"]] == [f"nightly-2026-11-23T0{hour}:00Z" for hour in (8, 7, 6)]
    assert document["cursor"] is None
    assert json.loads(batchdrain(capsys, "list", "--definition", "other", "--json")[1]) == {"batches": [], "cursor": None}


def test_failures_lists_each_failed_item_with_its_error_page_by_page(local: Served, failed_batch, capsys):
    code, out, _ = batchdrain(capsys, "failures", BATCH_ID, "--all")

    assert code == 0
    chunks = [line for line in out.splitlines() if line.startswith("chunk ")]
    errors = [line for line in out.splitlines() if line.startswith("  item ")]
    assert [re.search(r"item\(s\) ([\d, ]+)", line).group(1) for line in chunks] == ["5", "250", "731"]
    assert len(errors) == 3 and all("fails on purpose" in line for line in errors)

    document = json.loads(batchdrain(capsys, "failures", BATCH_ID, "--all", "--json")[1])
    assert sorted(item for failure in document["failures"] for item in failure["items"]) == [5, 250, 731]
    assert document["cursor"] is None


def test_wait_exits_0_when_the_batch_completes_and_prints_a_line_per_change(local: Served, aws, definition, settings, capsys):
    create_sealed_batch(definition, SLOT, settings)
    messages = aws.work_messages()

    def advance(path: str) -> None:  # three chunks between polls, then the finalizer
        if messages:
            processor.handle_sqs_event(sqs_event([messages.pop(0) for _ in range(min(3, len(messages)))]), settings)
        else:
            finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})

    local.before = advance
    code, out, err = batchdrain(capsys, "wait", BATCH_ID, "--timeout", "30")

    assert (code, err) == (0, "")
    *progress, summary = out.splitlines()
    assert summary == f"batch {BATCH_ID} COMPLETED: 1,000 items, 1,000 succeeded, 0 failed"
    percents = [float(re.search(r" ([\d.]+)%", line).group(1)) for line in progress]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100.0
    assert all(re.search(r"[\d,]+/1,000 items  \S+ items/s  ETA \S+", line) for line in progress)
    assert "\r" not in out


def test_wait_on_a_terminal_redraws_one_progress_line(local: Served, aws, definition, settings, capsys, monkeypatch):
    monkeypatch.setattr(wait, "interactive", lambda: True)
    create_sealed_batch(definition, SLOT, settings)
    run_to_the_end(aws, settings)

    code, out, _ = batchdrain(capsys, "wait", BATCH_ID)

    assert code == 0
    bar, summary = out.split("\n")[:2]
    assert re.fullmatch(r"\r\[#{24}\] nightly-\S+ COMPLETED 100\.0%  1,000/1,000 items  [\d,]+ items/s  ETA -\s*", bar)
    assert summary.startswith(f"batch {BATCH_ID} COMPLETED")


def test_wait_exits_3_with_failures_and_1_on_timeout(local: Served, aws, failed_batch, definition, settings, capsys):
    code, out, _ = batchdrain(capsys, "wait", BATCH_ID)
    assert code == 3 and out.splitlines()[-1] == f"batch {BATCH_ID} COMPLETED_WITH_FAILURES: 1,000 items, 997 succeeded, 3 failed"

    code, out, _ = batchdrain(capsys, "wait", BATCH_ID, "--json")
    assert code == 3 and json.loads(out)["done"] is True  # one document: the last answer

    running = create_sealed_batch(definition, SLOT.replace(hour=7), settings)
    code, out, err = batchdrain(capsys, "wait", running["batch_id"], "--timeout", "0")
    assert code == 1 and err == f"error: batch {running['batch_id']} did not complete within 0 s (it is SEALED)\n"


def test_redrive_starts_a_new_attempt_with_202_and_a_second_one_is_refused(local: Served, failed_batch, capsys):
    code, out, _ = batchdrain(capsys, "redrive", BATCH_ID, "--json")

    assert code == 0
    assert json.loads(out) == {"batch_id": BATCH_ID, "attempt": 2, "status": "SEALED", "status_url": f"/batches/{BATCH_ID}"}
    assert local.received[-1][:2] == ("POST", "/batches/nightly-2026-11-23T06:00Z/redrive")
    code, out, err = batchdrain(capsys, "redrive", BATCH_ID)  # attempt 2 runs: a 409, one line
    assert (code, out) == (1, "") and err.startswith("error: batch_id: ") and err.endswith("(HTTP 409)\n")


def test_redrive_wait_follows_the_new_attempt_to_its_end(local: Served, aws, failed_batch, settings, capsys):
    local.before = lambda path: run_to_the_end(aws, settings) if "/wait" in path else None

    code, out, _ = batchdrain(capsys, "redrive", BATCH_ID, "--wait")

    assert code == 0, out
    assert out.splitlines()[0] == f"batch {BATCH_ID}: attempt 2 started (SEALED)"
    assert out.splitlines()[-1] == f"batch {BATCH_ID} COMPLETED: 1,000 items, 1,000 succeeded, 0 failed (attempt 2)"


def test_cancel_stops_a_running_batch_with_202_and_wait_exits_3_when_it_ends_cancelled(
    local: Served, aws, definition, settings, capsys
):
    running = create_sealed_batch(definition, SLOT.replace(hour=7), settings)
    batch_id = running["batch_id"]

    code, out, _ = batchdrain(capsys, "cancel", batch_id, "--json")

    assert code == 0
    answer = json.loads(out)
    assert (answer["batch_id"], answer["status"], answer["status_url"]) == (batch_id, "SEALED", f"/batches/{batch_id}")
    assert local.received[-1][:2] == ("POST", f"/batches/{batch_id}/cancel")
    local.before = lambda path: run_to_the_end(aws, settings) if "/wait" in path else None
    code, out, _ = batchdrain(capsys, "cancel", batch_id, "--wait")  # again: 202, then wait for the end
    assert code == 3, out
    assert out.splitlines()[0] == f"batch {batch_id}: cancelled (SEALED until its rows are gone)"
    assert out.splitlines()[-1] == f"batch {batch_id} CANCELLED: 1,000 items, 0 succeeded, 1,000 failed"
    code, out, err = batchdrain(capsys, "cancel", batch_id)  # it has ended: a 409, one line
    assert (code, out) == (1, "") and err.startswith("error: batch_id: the batch has ended (CANCELLED)") and err.endswith("(HTTP 409)\n")


def test_submit_runs_a_definition_now_with_its_changes_and_a_retry_under_the_key_is_the_same_batch(
    local: Served, aws, settings, capsys
):
    def advance(path: str) -> None:
        if "/wait" in path:
            plan_batches(settings)
            run_to_the_end(aws, settings)

    local.before = advance
    argv = ("submit", "nightly", "--source", '{"type": "random", "count": 120, "max_value": 3}', "--k", "20", "--idempotency-key", "order-4711")

    code, out, _ = batchdrain(capsys, *argv, "--wait")

    assert code == 0, out
    batch_id = out.splitlines()[0].split()[1]
    assert out.splitlines()[-1] == f"batch {batch_id} COMPLETED: 120 items, 120 succeeded, 0 failed"
    assert local.received[0][:2] == ("POST", "/batches")
    code, again, _ = batchdrain(capsys, *argv, "--json")
    assert (code, json.loads(again)["batch_id"], json.loads(again)["status"]) == (0, batch_id, "COMPLETED")
    code, out, err = batchdrain(capsys, "submit", "nosuch")
    assert (code, out) == (1, "") and err.startswith("error: definition: must name a definition of the deployed file")


def test_the_local_stage_wants_a_token_the_stack_makes_and_never_the_config():
    from batchdrain_local.stack import stage_environment

    local = stage_environment("local")
    assert local["API_AUTH"] == "token" and "API_TOKEN" not in local  # chalice local would apply it over the stack's
    assert "API_AUTH" not in stage_environment("dev")  # deployed: IAM


def test_submit_items_file_sends_json_lines_inline_and_the_batch_runs_them(aws, monkeypatch, tmp_path, settings, capsys):
    aws.s3.create_bucket(Bucket="batchdrain-test-inbox")
    for app in import_app(monkeypatch, API_AUTH="token", API_TOKEN=TOKEN, INBOX_URI="s3://batchdrain-test-inbox/inbox/"):
        for served in serve(app, tmp_path):
            monkeypatch.setenv("BATCHDRAIN_API_URL", served.url)
            monkeypatch.setenv("BATCHDRAIN_API_TOKEN", TOKEN)
            items = tmp_path / "items.jsonl"
            items.write_text("".join(json.dumps({"id": n, "value": 0}) + "\n" for n in range(7)) + "\n")
            code, out, _ = batchdrain(capsys, "submit", "nightly", "--items-file", str(items), "--json")
            assert code == 0, out
            made = json.loads(out)
            assert json.loads(served.received[-1][3])["items"] == [{"id": n, "value": 0} for n in range(7)]
            plan_batches(dataclasses.replace(settings, inbox_uri="s3://batchdrain-test-inbox/inbox/"))
            (alert,) = run_to_the_end(aws, settings)
            assert (alert["batch_id"], alert["totals"]["items"], alert["totals"]["failed"]) == (made["batch_id"], 7, 0)
            items.write_text('{"id": 1}\nnot json\n')
            with pytest.raises(SystemExit):
                batchdrain(capsys, "submit", "nightly", "--items-file", str(items))
            assert "line 2: not JSON" in capsys.readouterr().err


def test_submit_open_then_add_twice_then_seal_wait_runs_the_sum_and_a_repeated_add_adds_nothing(aws, monkeypatch, tmp_path, settings, capsys):
    aws.s3.create_bucket(Bucket="batchdrain-test-inbox")
    inbox = dataclasses.replace(settings, inbox_uri="s3://batchdrain-test-inbox/inbox/")
    for app in import_app(monkeypatch, API_AUTH="token", API_TOKEN=TOKEN, INBOX_URI=inbox.inbox_uri):
        for served in serve(app, tmp_path):
            monkeypatch.setenv("BATCHDRAIN_API_URL", served.url)
            monkeypatch.setenv("BATCHDRAIN_API_TOKEN", TOKEN)
            code, out, _ = batchdrain(capsys, "submit", "nightly", "--open", "--json")
            assert code == 0, out
            batch_id = json.loads(out)["batch_id"]
            for number, count in enumerate((4, 6)):
                part = tmp_path / f"part{number}.jsonl"
                part.write_text("".join(json.dumps({"id": number * 100 + n, "value": 0}) + "\n" for n in range(count)))
                code, out, _ = batchdrain(capsys, "add", batch_id, str(part))
                assert (code, out) == (0, f"batch {batch_id}: {count:,} items added (part {number})\n")
            code, out, _ = batchdrain(capsys, "add", batch_id, str(tmp_path / "part1.jsonl"))  # again: the same call
            assert (code, out) == (0, f"batch {batch_id}: 6 items added (part 1)\n")

            def advance(path: str) -> None:
                if "/wait" in path:
                    plan_batches(inbox)
                    run_to_the_end(aws, inbox)

            served.before = advance
            code, out, _ = batchdrain(capsys, "seal", batch_id, "--wait")
            assert code == 0, out
            assert out.splitlines()[-1] == f"batch {batch_id} COMPLETED: 10 items, 10 succeeded, 0 failed"
            code, out, err = batchdrain(capsys, "add", batch_id, str(tmp_path / "part0.jsonl"), "--idempotency-key", "late")
            assert (code, out) == (1, "") and err.startswith("error: batch_id: the batch is sealed")
