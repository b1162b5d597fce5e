"""Command line for the local stack.

    python -m batchdrain_local demo [--items N] [--k K] [--scale S]
    python -m batchdrain_local up   [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from batchdrain_local.stack import PROJECT_DIR, LocalStack, StackOptions


def write_definitions(definition: str, items: int | None, k: int | None, scale: float | None) -> Path:
    """A copy of the shipped definitions with one definition's size, K and sleep scale overridden."""
    document = json.loads((PROJECT_DIR / "chalicelib" / "batches.json").read_text())
    matches = [entry for entry in document["definitions"] if entry.get("name") == definition]
    if not matches:
        raise SystemExit(f"error: chalicelib/batches.json has no definition {definition!r}")
    entry = matches[0]
    if items is not None:
        entry["source"]["count"] = items
    if k is not None:
        entry["items_per_message"] = k
    if scale is not None:
        entry.setdefault("task_options", {})["scale"] = scale
        # The sleep task takes at most max_value ms x scale: the processor's budget check needs it.
        entry["item_seconds"] = max(entry["source"].get("max_value", 1000) * scale / 1000, 0.001)
    handle, path = tempfile.mkstemp(prefix="batchdrain-definitions-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(document, file, indent=2)
    return Path(path)


def demo(arguments: argparse.Namespace) -> int:
    """One cron batch end to end: batcher -> SQS -> processor -> stream -> finalizer -> SNS."""
    definitions = write_definitions(arguments.definition, arguments.items, arguments.k, arguments.scale)
    options = StackOptions(definitions_file=definitions, processor_concurrency=arguments.concurrency)
    started = time.monotonic()
    try:
        with LocalStack(options) as stack:
            print(f"local stack up: AWS endpoint {stack.endpoint_url} (moto server), table {stack.resources.table_name}")
            definition = stack.app_module.DEFINITIONS[arguments.definition]
            print(
                f"firing cron batch '{definition.name}' ({definition.schedule}): "
                f"{definition.source.count:,} items, K={definition.items_per_message}, task {definition.task}"
            )
            fired = time.monotonic()
            creation: dict = {}
            creator = threading.Thread(
                target=lambda: creation.update(stack.fire_schedule(arguments.definition)), daemon=True
            )
            creator.start()
            batch_id = _wait_for_batch_id(stack, creation, creator)
            alert = _show_progress(stack, batch_id, fired, arguments.timeout)
            elapsed = time.monotonic() - fired
            print()
            print("completion alert received through SNS:")
            print(f"  subject:    {alert['subject']}")
            print(f"  attributes: {json.dumps(alert['attributes'], sort_keys=True)}")
            print("  message:    " + json.dumps(alert["message"], indent=2).replace("\n", "\n              "))
            print(
                f"batch {batch_id}: {alert['message']['totals']['items']:,} items in {elapsed:.1f} s "
                f"(wall time from cron event to alert); alerts for this batch: {len(stack.alerts_for(batch_id))}"
            )
            print(f"invocations: {dict(stack.invoker.invocations)}")
    finally:
        definitions.unlink(missing_ok=True)
    print(f"local stack stopped; demo took {time.monotonic() - started:.1f} s in all")
    return 0


def _wait_for_batch_id(stack: LocalStack, creation: dict, creator: threading.Thread) -> str:
    """The batch id is known once the header exists; poll the header rather than wait for creation."""
    definition = stack.app_module.DEFINITIONS
    from chalicelib import model
    from datetime import datetime, timezone

    candidates = [model.batch_id_for(name, datetime.now(timezone.utc)) for name in definition]
    while creator.is_alive() and not creation:
        for candidate in candidates:
            if stack.header(candidate):
                return candidate
        time.sleep(0.1)
    creator.join()
    if "batch_id" not in creation:
        raise SystemExit("error: the batcher failed; see the traceback above")
    return creation["batch_id"]


def _show_progress(stack: LocalStack, batch_id: str, fired: float, timeout: float) -> dict:
    last_line = ""
    while True:
        try:
            return stack.wait_for_alert(batch_id, timeout=1.0)
        except TimeoutError:
            pass
        if time.monotonic() - fired > timeout:
            raise SystemExit(f"error: no completion alert after {timeout:.0f} s; header: {stack.header(batch_id)}")
        header = stack.header(batch_id) or {}
        left = stack.chunks_left(batch_id, header.get("shards", 1))
        line = (
            f"  {time.monotonic() - fired:6.1f} s  status {header.get('status', '?'):<9} "
            f"chunks left {left:>6,} of {header.get('total_chunks', 0):,}"
        )
        if line != last_line:
            print(line, flush=True)
            last_line = line


def up(arguments: argparse.Namespace) -> int:
    """The stack plus `chalice local --stage local` in the foreground until Ctrl-C."""
    definitions = write_definitions(arguments.definition, arguments.items, arguments.k, arguments.scale)
    options = StackOptions(definitions_file=definitions, processor_concurrency=arguments.concurrency)
    with LocalStack(options) as stack:
        stack.on_alert = lambda alert: print(f"ALERT  {alert['subject']}\n       {json.dumps(alert['message'])}", flush=True)
        api = stack.start_chalice_local(arguments.port)
        print(f"AWS endpoint (moto server): {stack.endpoint_url}")
        print(f"API:                        http://127.0.0.1:{arguments.port}/batches/<batch_id>")
        print(f"definitions:                {', '.join(stack.app_module.DEFINITIONS)}")
        if arguments.clock_speed:
            clock = stack.start_clock(arguments.clock_speed)
            print(f"clock:                      x{arguments.clock_speed:g}, simulated time starts {clock.now():%Y-%m-%dT%H:%MZ}")
        print("fire a batch: type a definition name and Enter; Ctrl-C stops everything", flush=True)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        try:
            while not stopping.is_set() and api.poll() is None:
                line = sys.stdin.readline() if sys.stdin and sys.stdin.isatty() else ""
                name = line.strip()
                if name:
                    try:
                        header = stack.fire_schedule(name)
                        print(f"batch {header['batch_id']} {header['status']}: {header['total_items']:,} items", flush=True)
                    except KeyError as error:
                        print(error.args[0], flush=True)
                elif not line:
                    stopping.wait(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            api.terminate()
            api.wait(timeout=10)
    definitions.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchdrain_local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--definition", default="nightly", help="the definition to size (default nightly)")
    batch.add_argument("--items", type=int, default=None, help="items per batch (default: as configured)")
    batch.add_argument("--k", type=int, default=None, help="items per message (default: as configured)")
    batch.add_argument("--scale", type=float, default=0.002, help="sleep scale: value ms x scale (default 0.002)")
    batch.add_argument("--concurrency", type=int, default=4, help="concurrent processor invocations (default 4)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", parents=[batch], help="run one cron batch end to end, print its alert")
    run_demo.add_argument("--timeout", type=float, default=600, help="seconds to wait for the alert")
    run_demo.set_defaults(run=demo)
    run_up = commands.add_parser("up", parents=[batch], help="start the stack and chalice local until Ctrl-C")
    run_up.add_argument("--port", type=int, default=8000)
    run_up.add_argument(
        "--clock-speed", type=float, default=0, help="fire schedules at their slots, time running N x faster (0: off)"
    )
    run_up.set_defaults(run=up)
    arguments = parser.parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
