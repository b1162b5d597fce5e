"""`batchdrain validate`: a definitions file and a stage's settings, checked as a deploy checks them.

Each problem is one line, `file:line: field: what is wrong` (settings: `settings: what`),
on stderr, exit 1, no traceback; a valid file prints what it defines. With AWS credentials
the buckets and objects the definitions name must be reachable (moto here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from moto import mock_aws

from batchdrain_cli import cli
from batchdrain_deploy.project import Project
from chalicelib import config
from chalicelib.tasks import registered_tasks


def validate(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, list[str], list[str]]:
    code = cli.main(["validate", *arguments])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def definition(name: str = "people", **changes) -> dict:
    return {
        "name": name,
        "schedule": "cron(0 6 * * ? *)",
        "source": {"type": "random", "count": 100, "max_value": 10},
        "task": "noop",
        "items_per_message": 10,
        "item_seconds": 0.1,
        **changes,
    }


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def test_the_shipped_examples_are_valid_and_say_what_they_define(capsys):
    code, out, err = validate(capsys, "--offline")

    assert (code, err) == (0, [])
    assert out[0] == "chalicelib/batches.json: 1 definition(s) valid for stage 'dev'; S3 not checked (--offline)"
    assert out[1] == "  nightly: cron(0 0/6 * * ? *), random 10,000 generated items, task sleep"


def test_every_problem_is_one_line_naming_the_file_line_and_field(tmp_path: Path, capsys):
    path = write(
        tmp_path / "mine.json",
        {
            "definitions": [
                definition(schedule="cron(0 6 * * * *)", task="nosuch"),
                definition("other", items_per_message=0),
            ]
        },
    )

    code, out, err = validate(capsys, str(path), "--offline")

    assert (code, out) == (1, [])
    assert err == [
        f"{path}:5: definitions[0].schedule: 'cron(0 6 * * * *)': exactly one of day-of-month and day-of-week must be '?'",
        f"{path}:11: definitions[0].task: unknown task 'nosuch' (registered: {', '.join(registered_tasks())})",
        f"{path}:24: definitions[1].items_per_message: must be between 1 and 10,000, got 0",
    ]


def test_a_trailing_comma_is_blamed_on_its_own_line(tmp_path: Path, capsys):
    path = tmp_path / "mine.json"
    path.write_text('{\n  "definitions": [\n    {"name": "a"},\n  ]\n}\n')

    code, _, err = validate(capsys, str(path))

    assert code == 1
    assert err == [f"{path}:3: a comma before the closing bracket (JSON allows no trailing comma)"]


def test_a_setting_out_of_range_in_the_stage_is_named(capsys, monkeypatch: pytest.MonkeyPatch):
    """The stage's values are what a deployed function gets; this shell's would not reach it."""
    real = Project.stage_environment
    monkeypatch.setattr(
        Project, "stage_environment", lambda self, stage: {**real(self, stage), "PROCESSOR_BATCH_SIZE": "0"}
    )
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "5")  # the shell's value does not hide the stage's

    code, _, err = validate(capsys, "--offline")

    assert code == 1
    assert err == ["settings: environment variable PROCESSOR_BATCH_SIZE must be between 1 and 10,000, got 0"]


def test_the_users_task_modules_are_imported_before_their_definitions_are_checked(tmp_path: Path, capsys, monkeypatch):
    package = tmp_path / "mytasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "people.py").write_text(
        "from chalicelib.tasks import task\n\n\n@task('validate-upper')\ndef upper(item, options):\n    return item\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path / "mine.json", {"modules": ["mytasks.people"], "definitions": [definition(task="validate-upper")]})

    code, out, err = validate(capsys, str(path), "--offline")

    assert (code, err) == (0, [])
    assert out[1] == "  people: cron(0 6 * * ? *), random 100 generated items, task validate-upper"
    sys.modules.pop("mytasks.people", None)
    sys.modules.pop("mytasks", None)


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path: Path, capsys):
    path = write(tmp_path / "mine.json", {"modules": ["nosuch_tasks"], "definitions": [definition()]})

    code, _, err = validate(capsys, str(path), "--offline")

    assert code == 1
    assert err == [f"{path}:3: modules[0]: cannot import 'nosuch_tasks': ModuleNotFoundError: No module named 'nosuch_tasks'"]


def test_without_a_file_the_projects_own_definitions_come_first(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("BATCHDRAIN_DEFINITIONS", raising=False)
    monkeypatch.setattr(config, "PROJECT_DIR", tmp_path)
    write(tmp_path / config.USER_DEFINITIONS_FILE, {"definitions": [definition("mine")]})

    code, out, _ = validate(capsys, "--offline")

    assert code == 0
    assert out[0].startswith(f"{tmp_path / config.USER_DEFINITIONS_FILE}: 1 definition(s) valid")


def test_with_credentials_a_missing_bucket_or_object_is_named(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from chalicelib import aws

    aws.reset_clients()
    path = write(
        tmp_path / "mine.json",
        {
            "definitions": [
                definition(source={"type": "s3-jsonl", "uri": "s3://in-bucket/exports/people.jsonl"}),
                definition("daily", source={"type": "s3-jsonl", "uri": "s3://in-bucket/exports/{date}.jsonl"}, results={"bucket": "gone-bucket"}),
            ]
        },
    )
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="in-bucket")
        code, _, err = validate(capsys, str(path))
    aws.reset_clients()

    assert code == 1
    assert err == [
        f"{path}:8: definitions[0].source.uri: s3://in-bucket/exports/people.jsonl: not found",
        f"{path}:25: definitions[1].results.bucket: bucket 'gone-bucket': not found",
    ]
