"""`batchdrain cost` (batchdrain_cli/cost.py) and the pure parts of its model (batchdrain_cli/costmodel.py).

The model's request counts are checked against the app on the local stack in
tests/integration/test_cost_model.py; here: the command's arguments and output, the
defaults it reads, and the sizes it computes against the app's own cut.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from batchdrain_cli import cli, costmodel
from chalicelib import model, planner, pricing, sources
from chalicelib.chunks import new_chunk_row
from chalicelib.config import Source

PROJECT_DIR = Path(__file__).resolve().parents[2]
ISSUE_KEYS = {
    "total_usd",
    "usd_per_1m_items",
    "overhead_usd",
    "task_compute_usd",
    "by_service",
    "busiest_partition_writes_per_s",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli.main(["cost", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cost_json_has_the_keys_issue_11_names_and_its_sums_add_up(capsys):
    document = run(
        capsys, "--items", "1000000", "--k", "100", "--task-ms", "200", "--memory-mb", "256", "--concurrency", "1000"
    )

    assert ISSUE_KEYS <= set(document)
    assert set(document["by_service"]) == {"sqs", "dynamodb", "lambda", "sns", "s3", "logs"}
    assert math.isclose(sum(service["usd"] for service in document["by_service"].values()), document["overhead_usd"])
    assert math.isclose(document["overhead_usd"] + document["task_compute_usd"], document["total_usd"])
    assert math.isclose(document["usd_per_1m_items"], document["total_usd"])  # 1M items
    # The task's own compute: 1M x 0.2 s x 0.25 GB at the x86 price.
    assert math.isclose(document["task_compute_usd"], 1e6 * 0.2 * 0.25 * 0.0000166667, rel_tol=1e-9)
    assert document["by_service"]["dynamodb"]["requests"]["DeleteItem"] == 10_000  # one per chunk
    assert document["time_floor_s"] == pytest.approx(1e6 * 0.2 / 1000)


def test_cost_defaults_are_the_deployed_stage_and_its_definition(capsys):
    config = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    definition = json.loads((PROJECT_DIR / "chalicelib" / "batches.json").read_text())["definitions"][0]
    environment = {**config["environment_variables"], **config["stages"]["dev"]["environment_variables"]}

    document = run(capsys)

    workload = document["workload"]
    assert workload["items"] == definition["source"]["count"]
    # The definition leaves K to batchdrain: the K its batches get at its declared item_seconds (1 s: the budget's 57).
    assert "items_per_message" not in definition
    assert workload["k"] == 57 and workload["k_rule"].startswith("K=57 (auto: processing budget;")
    assert workload["memory_mb"] == config["stages"]["dev"]["lambda_memory_size"]
    assert workload["concurrency"] == int(environment["PROCESSOR_MAX_CONCURRENCY"])
    defaults = costmodel.deployed_defaults()
    assert defaults.processor_batch_size == int(environment["PROCESSOR_BATCH_SIZE"])  # the stage's 2, not the code's 10
    assert defaults.shard_chunk_target == int(environment["SHARD_CHUNK_TARGET"])
    assert defaults.finalizer_batch_size == int(environment["FINALIZER_BATCH_SIZE"])


def test_cost_table_names_every_service_and_the_task_apart(capsys):
    assert (
        cli.main(
            [
                "cost",
                "--items",
                "100000000",
                "--k",
                "100",
                "--task-ms",
                "200",
                "--memory-mb",
                "256",
                "--concurrency",
                "1000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out

    for text in (
        "sqs",
        "dynamodb",
        "lambda",
        "sns",
        "s3",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "WRU",
        "RRU",
        "GB-s",
        "task compute (apart)",
        "overhead (batchdrain)",
        "time floor at concurrency 1,000",
        "= 20,000 s",
        "busiest partition",
    ):
        assert text in out, text
    # 100M generated items are planned like an object: index ranges of SEGMENT_BYTES // RANDOM_ITEM_BYTES
    # items, filled by planners in parallel, each segment within one planner invocation.
    defaults = costmodel.deployed_defaults()
    segments = math.ceil(100_000_000 / (defaults.segment_bytes // sources.RANDOM_ITEM_BYTES))
    assert f"{segments:,} segment(s)" in out
    assert f"{min(segments, defaults.planner_concurrency):,} planner(s) at once" in out
    assert "warning:" not in out and "continuation(s)" not in out


def test_a_random_segment_longer_than_a_planner_invocation_continues_in_a_new_message(capsys):
    # K=1: a million chunks a segment, longer than one 900 s planner invocation.
    document = run(capsys, "--items", "100000000", "--k", "1", "--task-ms", "1", "--concurrency", "1000")

    defaults = costmodel.deployed_defaults()
    planning = document["planning"]
    assert planning["planner_invocation_s"] == defaults.planner_timeout_s - planner.MARGIN_MS / 1000
    assert planning["longest_segment_s"] > planning["planner_invocation_s"]
    continuations = planning["continuations"]
    assert continuations >= planning["segments"] - 1  # every full segment; the last holds fewer items
    assert document["lambda"]["plan_segments"]["invocations"] == planning["segments"] + continuations
    planners = document["requests_by_role"]["planners"]
    # Each continuation: the release and its planning message; then the header read and the claim again.
    assert planners["dynamodb:GetItem"] == planning["segments"] + continuations
    assert planners["dynamodb:UpdateItem"] == planning["segments"] + 2 * continuations + 2 * len(
        costmodel.shape_of(costmodel.workload_from_defaults(defaults, items=100_000_000, k=1), defaults).groups
    )
    assert "s3:GetObject" not in planners  # generated items read nothing


def test_cost_compare_prices_the_origin_design_and_step_functions(capsys):
    document = run(capsys, "--items", "1000000", "--k", "100", "--task-ms", "200", "--compare")

    names = list(document["alternatives"])
    assert any(name.startswith("origin design") for name in names)
    assert any(name.startswith("Step Functions Distributed Map, Express") for name in names)
    origin = next(value for name, value in document["alternatives"].items() if name.startswith("origin"))
    assert origin["overhead_usd"] > 10 * document["overhead_usd"]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--k", "0"], "--k"),
        (["--k", "10001"], "--k"),
        (["--k", "many"], "--k"),
        (["--items", "0"], "--items"),
        (["--items", "2e9"], "--items"),
        (["--items", "200000000"], "--items"),  # a random source holds at most 100,000,000
        (["--memory-mb", "64"], "--memory-mb"),
        (["--concurrency", "1"], "--concurrency"),
        (["--task-ms", "-1"], "--task-ms"),
        (["--source", "csv"], "--source"),
        (["--arch", "sparc"], "--arch"),
        (["--stage", "prod"], "prod"),
    ],
)
def test_bad_arguments_get_a_clear_error(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cost", *argv])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "batchdrain cost: error:" in error and option in error


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_make_setup_installs_the_command():
    command = Path(sys.executable).parent / "batchdrain"
    assert command.exists(), f"{command} is missing: run `make setup`"

    done = subprocess.run(
        [str(command), "cost", "--items", "1000", "--json"], capture_output=True, text=True, cwd="/", timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert ISSUE_KEYS <= set(json.loads(done.stdout))


# -- the model's sizes against the app's own code --------------------------------------------


def planned_chunks(workload: costmodel.Workload, defaults: costmodel.Defaults, segment_bytes: int):
    """A random batch as the app plans and cuts it: sources.plan's segments, each cut by planner._chunks."""
    plan = sources.plan(
        Source(type="random", count=workload.items, max_value=defaults.random_max_value),
        "",
        segment_bytes,
        seed=workload.batch_id,
    )
    header = {
        "batch_id": workload.batch_id,
        "task": defaults.task,
        "task_options": json.dumps(dict(defaults.task_options)),
        "items_per_message": workload.k,
        "max_message_bytes": defaults.max_message_bytes,
        "item_seconds": defaults.item_seconds,
        "attempt": 1,
        "source_pin": plan.pin,
        "shards": model.shard_count(plan.estimated_items // workload.k + 1, defaults.shard_chunk_target),
    }
    segments = [list(planner._chunks(header, n, spec, 0, None)) for n, spec in enumerate(plan.segments)]
    return plan, header, segments


@pytest.mark.parametrize("segment_bytes", [None, 64 * 1_000])  # one segment; five of 1,000 items
def test_the_shape_is_the_planners_own_cut(segment_bytes):
    defaults = costmodel.deployed_defaults()
    if segment_bytes is not None:
        defaults = dataclasses.replace(defaults, segment_bytes=segment_bytes)
    workload = costmodel.workload_from_defaults(defaults, items=5_000, k=40)
    plan, header, segments = planned_chunks(workload, defaults, defaults.segment_bytes)
    chunks = [chunk for segment in segments for chunk in segment]

    shape = costmodel.shape_of(workload, defaults)

    per_segment = defaults.segment_bytes // sources.RANDOM_ITEM_BYTES
    assert shape.segments == len(plan.segments) == math.ceil(5_000 / per_segment)
    assert shape.segment_chunks == tuple(len(segment) for segment in segments)
    assert shape.chunks == len(chunks) == 125
    assert shape.shards == header["shards"] and shape.open_shards == header["shards"]
    assert shape.groups == tuple(len(group) for segment in segments for group in planner._groups(iter(segment)))
    assert costmodel.source_pin(workload, defaults) == plan.pin
    # The sampled message bodies and rows are the real ones: rows without a span, numbered per segment.
    assert all(chunk.span is None for chunk in chunks)
    real_body = sum(len(chunk.body()) for chunk in chunks) / len(chunks)
    rows = [
        costmodel.item_bytes(new_chunk_row(c.batch_id, c.shard, c.chunk_no, c.indices, 1, c.span)) for c in chunks
    ]
    assert shape.message_bytes == pytest.approx(real_body, rel=0.01)
    assert shape.row_bytes == pytest.approx(sum(rows) / len(rows), rel=0.01)


def test_a_byte_budget_cuts_before_k():
    defaults = costmodel.deployed_defaults()
    workload = costmodel.workload_from_defaults(defaults, items=1_000, k=10_000, item_bytes=10_000)

    shape = costmodel.shape_of(workload, defaults)

    per_message = (
        model.item_budget(defaults.max_message_bytes, len(json.dumps(dict(defaults.task_options)).replace(" ", "")))
        // 10_008
    )
    assert shape.chunks == math.ceil(1_000 / per_message)


@pytest.mark.parametrize(
    "item, size",
    [
        ({"a": "abc"}, 4),  # name + UTF-8 bytes
        ({"n": 12345}, 1 + 3 + 1),  # 5 significant digits: 3 bytes, + 1
        ({"n": 1000}, 1 + 1 + 1),  # trailing zeros trimmed
        ({"l": [1, 2]}, 1 + 3 + 2 * (1 + 2)),  # list: 3 + 1 per element
        ({"m": {"x": True}}, 1 + 3 + (1 + 1 + 1)),  # map: 3 + key + 1 per element
    ],
)
def test_item_sizes_follow_dynamodbs_documented_rules(item, size):
    assert costmodel.item_bytes(item) == size


def test_write_and_read_units_round_up_and_never_reach_zero():
    assert [costmodel.write_units(size) for size in (1, 1024, 1025)] == [1, 1, 2]
    assert [costmodel.read_units(size) for size in (0, 4096, 4097)] == [1, 1, 2]


def test_prices_come_from_the_table_with_its_sources():
    prices = costmodel.load_prices()
    table = json.loads(pricing.PRICES_PATH.read_text())

    assert prices.wru * 1e6 == table["dynamodb"]["on_demand_write_request_units_per_million"]
    assert prices.sqs_request * 1e6 == table["sqs"]["standard_requests_per_million"]
    assert table["checked"] and all(source for source in prices.sources)
