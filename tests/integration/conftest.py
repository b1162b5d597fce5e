"""Integration fixtures: a fresh local stack (moto server on 127.0.0.1) per test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchdrain_local import LocalStack, StackOptions
from batchdrain_local.stack import PROJECT_DIR
from tests.integration.support import ATTEMPTS, RUNS

def write_definitions(directory: Path, **overrides: Any) -> Path:
    """The shipped definitions, with the 'nightly' definition's fields overridden."""
    document = json.loads((PROJECT_DIR / "chalicelib" / "batches.json").read_text())
    nightly = document["definitions"][0]
    for key, value in overrides.items():
        if key == "count":
            nightly["source"]["count"] = value
        else:
            nightly[key] = value
    path = directory / "batches.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    """Start a local stack for a batch of `count` items, K items per message (shards of 4 chunks)."""
    stacks: list[LocalStack] = []
    RUNS.clear()
    ATTEMPTS.clear()

    def start(count: int = 2_000, items_per_message: int = 50, task_name: str = "count", **options: Any) -> LocalStack:
        # The test tasks return at once: 0.01 s an item keeps any K these tests use within the
        # processor's time budget (config.check_processing_budget), which app.py checks at import.
        definitions = write_definitions(
            tmp_path,
            count=count,
            items_per_message=items_per_message,
            item_seconds=0.01,
            task=task_name,
            task_options={"scale": 0},
        )
        environment = {"SHARD_CHUNK_TARGET": "4", **options.pop("extra_environment", {})}
        stack = LocalStack(
            StackOptions(**{"definitions_file": definitions, "visibility_timeout": 5, "extra_environment": environment, **options})
        )
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()
