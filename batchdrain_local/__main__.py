"""Command line for the local stack.

    python -m batchdrain_local demo [--items N] [--k K] [--scale S]
    python -m batchdrain_local demo --source s3 [--items N] [--objects N] [--segment-bytes B] [--definitions FILE]
    python -m batchdrain_local up   [--port 8000] [--definitions FILE --sample-data] [--fire NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from batchdrain_local import s3demo
from batchdrain_local.stack import PROJECT_DIR, LocalStack, StackOptions

SHIPPED_DEFINITIONS = PROJECT_DIR / "chalicelib" / "batches.json"


def write_definitions(
    definition: str, items: int | None, k: int | None, scale: float | None, path: Path = SHIPPED_DEFINITIONS
) -> Path:
    """A copy of the definitions file (default: the shipped one) with one definition's size, K and sleep scale overridden."""
    document = json.loads(path.read_text())
    matches = [entry for entry in document["definitions"] if entry.get("name") == definition]
    if not matches:
        raise SystemExit(f"error: {path} has no definition {definition!r}")
    entry = matches[0]
    if items is not None:
        entry["source"]["count"] = items
    if k is not None:
        entry["items_per_message"] = k
    if scale is not None:
        entry.setdefault("task_options", {})["scale"] = scale
        # The sleep task takes at most max_value ms x scale: the processor's budget check needs it.
        entry["item_seconds"] = max(entry["source"].get("max_value", 1000) * scale / 1000, 0.001)
    handle, copy = tempfile.mkstemp(prefix="batchdrain-definitions-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(document, file, indent=2)
    return Path(copy)


def demo(arguments: argparse.Namespace) -> int:
    """One cron batch end to end: batcher -> SQS -> processor -> stream -> finalizer -> SNS."""
    if arguments.source == "s3":
        return s3demo.demo(arguments)
    definitions = write_definitions(
        arguments.definition, arguments.items, arguments.k, arguments.scale, Path(arguments.definitions or SHIPPED_DEFINITIONS)
    )
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
            alert = _show_progress(stack, batch_id, fired, arguments.timeout or 600)
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
    """The stack plus `chalice local --stage local` in the foreground until Ctrl-C.

    With `--definitions FILE` the file is used as it is (`--items`, `--k`, `--scale` size
    the shipped file's definition only); the buckets its definitions name are created,
    and `--sample-data` fills them as `demo --source s3` does. `--fire NAME` fires a
    definition's cron batch once the stack is up.
    """
    if arguments.definitions:
        definitions, owned = Path(arguments.definitions).resolve(), False
    else:
        definitions, owned = write_definitions(arguments.definition, arguments.items, arguments.k, arguments.scale), True
    options = StackOptions(definitions_file=definitions, processor_concurrency=arguments.concurrency)
    with LocalStack(options) as stack:
        stack.on_alert = lambda alert: print(f"ALERT  {alert['subject']}\n       {json.dumps(alert['message'])}", flush=True)
        # Its own process group: chalice local's auto-reloader serves from a child process,
        # which terminating the parent alone would leave running (and holding the port).
        api = stack.start_chalice_local(arguments.port, start_new_session=True)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        try:  # from here on, whatever happens stops chalice local too
            print(f"AWS endpoint (moto server): {stack.endpoint_url}")
            print(f"API:                        http://127.0.0.1:{arguments.port}/batches/<batch_id>")
            print(f"definitions:                {', '.join(stack.app_module.DEFINITIONS)}")
            s3 = stack.client("s3")
            buckets = s3demo.create_buckets(s3, stack.app_module.DEFINITIONS)
            if buckets:
                print(f"buckets:                    {', '.join(buckets)}")
            if arguments.sample_data:
                slot = datetime.now(timezone.utc).replace(second=0, microsecond=0)
                s3demo.upload_sample_data(
                    s3, stack.app_module.DEFINITIONS, slot, arguments.objects, arguments.items or s3demo.DEFAULT_LINES,
                    arguments.bad_lines, out=lambda line: print(f"sample data:                {line}"),
                )
            if arguments.clock_speed:
                clock = stack.start_clock(arguments.clock_speed)
                print(f"clock:                      x{arguments.clock_speed:g}, simulated time starts {clock.now():%Y-%m-%dT%H:%MZ}")
            print("fire a batch: type a definition name and Enter; Ctrl-C stops everything", flush=True)
            for name in arguments.fire:
                _fire(stack, name)
            while not stopping.is_set() and api.poll() is None:
                line = sys.stdin.readline() if sys.stdin and sys.stdin.isatty() else ""
                name = line.strip()
                if name:
                    _fire(stack, name)
                elif not line:
                    stopping.wait(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            _stop_group(api)
    if owned:
        definitions.unlink(missing_ok=True)
    return 0


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and every process it started."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _fire(stack: LocalStack, name: str) -> None:
    """Fire a definition's cron batch for this minute and say what was created."""
    try:
        batch_id = stack.fire_schedule(name)["batch_id"]
    except KeyError as error:
        print(error.args[0], flush=True)
        return
    header = stack.header(batch_id) or {}
    batch = f"batch {batch_id} {header.get('status')}"
    if header.get("status") == "FAILED":
        print(f"{batch}: {header.get('reason', '')}", flush=True)
    elif header.get("source_pin"):
        print(f"{batch}: {header['source_pin']['uri']}, {header.get('segments', 0):,} segment(s)", flush=True)
    else:
        print(f"{batch}: {header.get('total_items', 0):,} items", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchdrain_local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--definition", default="nightly", help="the definition to size (default nightly)")
    batch.add_argument(
        "--items", type=int, default=None, help="items per batch; with S3 sources, lines of the sample export (default 10,000)"
    )
    batch.add_argument("--k", type=int, default=None, help="items per message (default: as configured)")
    batch.add_argument("--scale", type=float, default=0.002, help="sleep scale: value ms x scale (default 0.002)")
    batch.add_argument("--concurrency", type=int, default=4, help="concurrent invocations per queue (default 4)")
    batch.add_argument("--definitions", default=None, help="a definitions file (S3 examples: examples/s3-digest.json)")
    batch.add_argument(
        "--objects", type=int, default=s3demo.DEFAULT_OBJECTS, help="sample objects under each s3-prefix source (default 300)"
    )
    batch.add_argument("--bad-lines", type=int, default=1, help="sample export lines cut short, to show failures (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", parents=[batch], help="run one cron batch end to end, print its alert")
    run_demo.add_argument("--source", choices=("random", "s3"), default="random", help="s3: the S3 definitions (default random)")
    run_demo.add_argument(
        "--segment-bytes", type=int, default=None, help="SEGMENT_BYTES for --source s3 (default 4 MiB, to show fan-out)"
    )
    run_demo.add_argument("--timeout", type=float, default=None, help="seconds to wait for an alert (600; s3: 1800)")
    run_demo.set_defaults(run=demo)
    run_up = commands.add_parser("up", parents=[batch], help="start the stack and chalice local until Ctrl-C")
    run_up.add_argument("--port", type=int, default=8000)
    run_up.add_argument(
        "--clock-speed", type=float, default=0, help="fire schedules at their slots, time running N x faster (0: off)"
    )
    run_up.add_argument("--sample-data", action="store_true", help="fill the definitions' S3 sources as the S3 demo does")
    run_up.add_argument("--fire", action="append", default=[], metavar="NAME", help="fire this definition once up")
    run_up.set_defaults(run=up)
    arguments = parser.parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
