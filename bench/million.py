"""`make bench-1m`: one 1,000,000-item batchdrain batch end to end, with every process's memory.

    python -m bench.million [--items 1000000] [--k K] [--item-seconds 0.2] [--out bench/results] [--stock-moto]

The batch runs in a child process (`python -m bench.harness --system batchdrain`: the
local stack, moto's server thread and the app all live there); this process samples the
RSS of the child and of itself every second from /proc, so sampling never perturbs the
run. Writes bench/results/million.json (the run's record, the peak and growth of each
process's RSS, a downsampled RSS timeline, and the CPU by owner: moto vs batchdrain)
and million.md. K is batchdrain's own choice for the shipped definition, as `make bench`
runs it (the header's `items_per_message` and `k_rule`), unless `--k` pins one.

RSS growth is the highest RSS sampled while the batch ran less the child's RSS when the
cron event fired (after the stack started), so it measures what the batch itself keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from batchdrain_local.stack import PROJECT_DIR
from bench.harness import BENCH_ITEM_SECONDS, RESULTS_DIR
from bench.measure import RssSampler, peak_rss_bytes

TIMELINE_POINTS = 120


def run(items: int, out: Path, k: int | None = None, stock_moto: bool = False,
        item_seconds: float = BENCH_ITEM_SECONDS) -> dict[str, Any]:
    handle, record_path = tempfile.mkstemp(prefix="batchdrain-bench-1m-", suffix=".json")
    os.close(handle)
    command = [sys.executable, "-m", "bench.harness", "--system", "batchdrain", "--items", str(items), "--json", record_path]
    if k is not None:
        command += ["--k", str(k)]
    if item_seconds != BENCH_ITEM_SECONDS:
        command += ["--item-seconds", repr(item_seconds)]
    if stock_moto:
        command.append("--stock-moto")
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=PROJECT_DIR)
    sampler = RssSampler({"stack": child.pid, "driver": os.getpid()}, interval=1.0).start()
    try:
        code = child.wait()
    except BaseException:
        child.terminate()  # interrupted: the run must not outlive its driver
        child.wait(timeout=30)
        raise
    finally:
        samples = sampler.stop()
    if code != 0:
        raise SystemExit(f"the 1M run failed (exit {code})")
    record = json.loads(Path(record_path).read_text())
    Path(record_path).unlink(missing_ok=True)
    loads = [sample["load"] for sample in samples if "load" in sample]
    peak = {name: max((sample[name] for sample in samples if name in sample), default=0.0) for name in ("stack", "driver")}
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "total_s": round(time.monotonic() - started, 1),
        "run": record,
        "processes": {
            "stack": {
                "what": "python -m bench.harness: local stack, moto server thread, the app's handlers, pollers",
                "peak_rss_mb": max(peak["stack"], record.get("peak_rss_mb", 0.0)),
                "rss_at_fire_mb": record["rss_at_fire_mb"],
                "rss_growth_mb": round(peak["stack"] - record["rss_at_fire_mb"], 1),
            },
            "driver": {
                "what": "python -m bench.million: starts the run, samples RSS",
                "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
            },
        },
        # Above ~1.2 for long, something else shared the 2 cores during the run.
        "load_average_1m": {
            "median": statistics.median(loads) if loads else None,
            "max": max(loads, default=None),
        },
        "rss_timeline_mb": _downsample(samples, TIMELINE_POINTS),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "million.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "million.md").write_text(markdown(document))
    return document


def _downsample(samples: list[dict[str, float]], points: int) -> list[dict[str, float]]:
    step = max(1, len(samples) // points)
    return samples[::step]


def markdown(document: dict[str, Any]) -> str:
    run, stack = document["run"], document["processes"]["stack"]
    cpu = run.get("cpu_s") or {}
    process = cpu.get("process_s") or 0.0
    batchdrain = (cpu.get("app_s") or 0.0) + (cpu.get("app_client_s") or 0.0)

    def share(seconds: float) -> str:
        return f"{seconds:,.0f} s ({100 * seconds / process:.0f} %)" if process else "-"

    load = document.get("load_average_1m") or {}
    lines = [
        "| items | K | chunks | shards | wall s | items/s | completion latency s | peak RSS, stack process | RSS growth | peak RSS, driver |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {run['items']:,} | {run['k']} | {run.get('chunks', 0):,} | {run.get('shards', 0)} | {run['wall_s']:.0f} | "
        f"{run['items_per_s']:,.0f} | {run['completion_latency_s']:.2f} | {stack['peak_rss_mb']:.0f} MB | "
        f"{stack['rss_growth_mb']:.0f} MB | {document['processes']['driver']['peak_rss_mb']:.0f} MB |",
        "",
        f"K: {run.get('k_rule') or run['k']}.",
        "",
        f"Load average (1 min) while it ran: median {load.get('median')}, max {load.get('max')} "
        f"({document['machine']['cores']} cores; near 1 the run had the machine to itself).",
        "",
        f"CPU from cron event to alert: {share(process)} in all; moto (the emulator's request handling) "
        f"{share(cpu.get('emulator_s') or 0.0)}; batchdrain's handlers {share(batchdrain)} "
        f"(chalicelib {cpu.get('app_s', 0):,.0f} s + its boto3 calls {cpu.get('app_client_s', 0):,.0f} s); "
        f"the local stack's pollers and the harness {share((cpu.get('stack_client_s') or 0.0) + (cpu.get('other_s') or 0.0))}.",
        "",
        "moto's busiest operations (CPU s): "
        + ", ".join(f"{name} {value:,.0f}" for name, value in (cpu.get("emulator_top_operations_s") or {}).items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=None, help="pin K (default: batchdrain chooses it, chalicelib/sizing.py)")
    parser.add_argument("--item-seconds", type=float, default=BENCH_ITEM_SECONDS,
                        help=f"the item_seconds the definition declares (default {BENCH_ITEM_SECONDS}: the fast task)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stock-moto", action="store_true", help="moto without batchdrain_local/emulator.py's fixes")
    arguments = parser.parse_args(argv)
    document = run(arguments.items, arguments.out, arguments.k, arguments.stock_moto, arguments.item_seconds)
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
