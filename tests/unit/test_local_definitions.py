"""The local stack runs a definitions file as written: which file, overrides only when given, data never overwritten."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from batchdrain_local import control, data
from batchdrain_local import definitions as files
from chalicelib import config
from chalicelib.config import load_definitions
from chalicelib.errors import ConfigError

SLOT = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "local-stack"
VISITS = DOCS / "visits.json"


def document(path: Path = VISITS) -> dict:
    return json.loads(path.read_text())


# -- which file ------------------------------------------------------------------------------


def test_the_file_is_the_one_named_then_the_environment_then_the_projects_own_then_the_shipped_one(
    tmp_path, monkeypatch
):
    own = tmp_path / "batchdrain_definitions.json"
    monkeypatch.setattr(config, "PROJECT_DIR", tmp_path)  # the app's lookup, which the stack uses
    assert files.definitions_file() == files.SHIPPED_DEFINITIONS
    own.write_text("{}")
    assert files.definitions_file() == own
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", "from-env.json")
    assert files.definitions_file() == Path("from-env.json")
    assert files.definitions_file("named.json") == Path("named.json")


# -- overrides --------------------------------------------------------------------------------


def test_a_users_definition_is_run_as_written_when_no_override_is_given():
    assert files.with_overrides(document(), VISITS, "hourly-sample", files.Overrides()) == (document(), [], None)


def test_each_override_is_applied_to_the_named_definition_and_listed():
    changed, changes, note = files.with_overrides(document(), VISITS, "hourly-sample", files.Overrides(items=200, k=20))

    assert [change.line() for change in changes] == [
        "override: source.count 500 -> 200",
        "override: items_per_message 100 -> 20",
    ]
    assert note is None
    sample = changed["definitions"][1]
    assert (sample["source"]["count"], sample["items_per_message"]) == (200, 20)
    assert changed["definitions"][0] == document()["definitions"][0]  # the other definition as written


def test_scale_overrides_the_sleep_tasks_scale_and_its_item_seconds_with_it():
    _, changes, _ = files.with_overrides(document(), VISITS, "hourly-sample", files.Overrides(scale=0.001))

    assert [change.line() for change in changes] == [
        "override: task_options.scale 0.01 -> 0.001",
        "override: item_seconds 0.01 -> 0.001",
    ]


def test_an_override_the_app_would_refuse_names_the_users_file_and_the_override():
    with pytest.raises(ConfigError) as refused:
        files.with_overrides(document(), VISITS, "hourly-sample", files.Overrides(k=0))

    assert str(refused.value) == (
        f"{VISITS} with K=0: definitions[1].items_per_message: must be between 1 and 10,000, got 0"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (files.Overrides(items=10), "ITEMS=10 sets the item count of a random source; 'count-visits' reads s3://my-input/"),
        (files.Overrides(scale=0.5), "SCALE=0.5 speeds up the sleep task; 'count-visits' runs 'noop'"),
    ],
)
def test_an_override_that_does_not_fit_the_definition_says_why(overrides, message):
    with pytest.raises(ConfigError, match=message):
        files.with_overrides(document(), VISITS, "count-visits", overrides)


def test_overrides_of_a_file_with_several_definitions_need_the_definitions_name():
    with pytest.raises(ConfigError, match=r"K=5 applies to one definition; name it with DEFINITION= \(it has: count-visits, hourly-sample\)"):
        files.with_overrides(document(), VISITS, None, files.Overrides(k=5))


def test_an_unknown_definition_name_lists_the_files_definitions():
    with pytest.raises(ConfigError, match=r"no definition 'nosuch' \(it has: count-visits, hourly-sample\)"):
        files.pick(document(), VISITS, "nosuch")


def test_the_shipped_example_is_sped_up_unless_the_user_says_otherwise_and_says_so():
    shipped = document(files.SHIPPED_DEFINITIONS)

    _, changes, note = files.with_overrides(shipped, files.SHIPPED_DEFINITIONS, None, files.Overrides())
    assert note == files.SHIPPED_EXAMPLE_NOTE
    # K stays batchdrain's to choose: the faster items fill a row.
    assert {change.field: change.new for change in changes} == {"task_options.scale": 0.002, "item_seconds": 0.002}

    _, changes, _ = files.with_overrides(shipped, files.SHIPPED_DEFINITIONS, None, files.Overrides(k=50))
    assert {change.field: change.new for change in changes}["items_per_message"] == 50


def test_the_copy_with_overrides_is_removed_and_the_users_file_is_loaded_itself(tmp_path):
    with files.loadable(document(), VISITS, []) as loaded:
        assert loaded == VISITS
    changed, changes, _ = files.with_overrides(document(), VISITS, "hourly-sample", files.Overrides(k=20))
    with files.loadable(changed, VISITS, changes) as loaded:
        assert loaded.name == "visits.json" and json.loads(loaded.read_text()) == changed
    assert not loaded.exists() and not loaded.parent.exists()


# -- the stack's S3: the user's files, sample data never over them -------------------------------


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        yield client


def test_sample_data_never_goes_over_an_object_that_exists_and_says_so(s3):
    definitions = load_definitions(Path(__file__).resolve().parents[2] / "examples" / "s3-digest.json")
    data.create_buckets(s3, definitions)
    export = f"exports/{SLOT:%Y-%m-%d}/orders.jsonl"
    s3.put_object(Bucket="batchdrain-demo-input", Key=export, Body=b'{"mine": 1}\n')
    s3.put_object(Bucket="batchdrain-demo-input", Key="photos/mine.jpg", Body=b"mine")
    said: list[str] = []

    sample = data.upload_sample_data(s3, definitions, SLOT, objects=3, lines=10, out=said.append)

    assert s3.get_object(Bucket="batchdrain-demo-input", Key=export)["Body"].read() == b'{"mine": 1}\n'
    photos = s3.list_objects_v2(Bucket="batchdrain-demo-input", Prefix="photos/")["Contents"]
    assert [obj["Key"] for obj in photos] == ["photos/mine.jpg"]
    assert said == [
        "s3://batchdrain-demo-input/photos/ holds objects already: left as they are (sample data never goes over an object)",
        f"s3://batchdrain-demo-input/{export} exists: left as it is (sample data never goes over an object)",
    ]
    assert (sample.digests, sample.lines) == ({}, {})


def test_an_upload_goes_where_the_definition_reads_for_the_minute_and_sample_data_leaves_it(s3):
    definitions = load_definitions(VISITS)
    said: list[tuple[str, str]] = []

    data.prepare(
        s3, definitions, SLOT, lambda label, text: said.append((label, text)),
        uploads=[data.Upload.parse(str(DOCS / "visits.jsonl"))], sample_data=True, lines=10,
    )

    uri = "s3://my-input/visits/2026-12-06/visits.jsonl"
    assert s3.get_object(Bucket="my-input", Key="visits/2026-12-06/visits.jsonl")["Body"].read() == (DOCS / "visits.jsonl").read_bytes()
    assert said == [
        ("buckets", "my-input, my-results"),
        ("upload", f"{DOCS / 'visits.jsonl'} -> {uri} ({(DOCS / 'visits.jsonl').stat().st_size:,} bytes)"),
        ("sample data", f"{uri} exists: left as it is (sample data never goes over an object)"),
    ]


def test_an_upload_with_a_uri_goes_there_and_a_source_not_found_is_said(s3, tmp_path):
    definitions = load_definitions(VISITS)
    mine = tmp_path / "other.jsonl"
    mine.write_text('{"a": 1}\n')
    said: list[tuple[str, str]] = []

    data.prepare(s3, definitions, SLOT, lambda label, text: said.append((label, text)), uploads=[data.Upload.parse(f"{mine}=s3://my-input/elsewhere.jsonl")])

    assert s3.get_object(Bucket="my-input", Key="elsewhere.jsonl")["Body"].read() == b'{"a": 1}\n'
    assert said[-1] == (
        "not found",
        "s3://my-input/visits/2026-12-06/visits.jsonl: count-visits fired now would end FAILED; "
        "give your file with UPLOAD=FILE, or SAMPLE_DATA=1",
    )


def test_an_upload_that_is_not_there_or_has_no_place_is_refused(tmp_path):
    with pytest.raises(data.UploadError, match="no file or directory"):
        data.Upload.parse(str(tmp_path / "missing.jsonl"))
    two = {**load_definitions(VISITS), **load_definitions(Path(__file__).resolve().parents[2] / "examples" / "s3-digest.json")}
    with pytest.raises(data.UploadError, match=r"say where it goes.*\(definitions with an S3 source: count-visits, photo-digests, orders-export\)"):
        data.upload_target(data.Upload.parse(str(VISITS)), two, None, SLOT)


# -- firing --------------------------------------------------------------------------------------


def test_fire_at_takes_a_minute_in_utc():
    assert control.parse_slot("2026-12-06T05:00:42Z") == SLOT
    assert control.parse_slot("2026-12-06T05:00") == SLOT
    assert control.parse_slot("2026-12-06T06:00+01:00") == SLOT
    with pytest.raises(ValueError, match="--at 'tomorrow': not a time; write it as 2026-12-06T05:00Z"):
        control.parse_slot("tomorrow")
