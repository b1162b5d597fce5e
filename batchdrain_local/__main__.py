"""Command line for the local stack.

    python -m batchdrain_local demo [--definitions FILE] [--definition NAME] [--items N] [--k K] [--scale S]
                                    [--upload FILE[=s3://bucket/key]] [--sample-data]
    python -m batchdrain_local demo --source s3 [--items N] [--objects N] [--segment-bytes B]
    python -m batchdrain_local up   [--port 8000] [--definitions FILE] [--fire NAME ...]
                                    [--upload FILE[=s3://bucket/key]] [--sample-data]

Definitions run as written; --items, --k and --scale override one definition, and are
printed. A user's error (a bad definitions file, a busy port, an unknown definition)
is one line on standard error and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from batchdrain_local import data, demo, up
from chalicelib.errors import BatchdrainError, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchdrain_local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument(
        "--definitions", default=None,
        help="the definitions file (default: BATCHDRAIN_DEFINITIONS, else batchdrain_definitions.json, else the shipped one)",
    )
    batch.add_argument("--definition", default=None, help="the definition to run or override (default: the file's first)")
    batch.add_argument(
        "--items", type=int, default=None, help="override a random source's count; with --sample-data, lines of the sample export"
    )
    batch.add_argument("--k", type=int, default=None, help="override items_per_message")
    batch.add_argument("--scale", type=float, default=None, help="override the sleep task's scale (value ms x scale)")
    batch.add_argument("--concurrency", type=int, default=4, help="concurrent invocations per queue (default 4)")
    batch.add_argument(
        "--upload", action="append", default=[], metavar="FILE[=s3://bucket/key]",
        help="put your own file (or directory) in the stack's S3: at the URI, or where the definition reads",
    )
    batch.add_argument("--sample-data", action="store_true", help="fill S3 sources with sample data (never over an object)")
    batch.add_argument(
        "--objects", type=int, default=data.DEFAULT_OBJECTS, help="sample objects under each s3-prefix source (default 300)"
    )
    batch.add_argument("--bad-lines", type=int, default=1, help="sample export lines cut short, to show failures (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", parents=[batch], help="run one cron batch end to end, print its alert")
    run_demo.add_argument("--source", choices=("definitions", "s3"), default="definitions", help="s3: the S3 examples")
    run_demo.add_argument(
        "--segment-bytes", type=int, default=None, help="SEGMENT_BYTES for --source s3 (default 4 MiB, to show fan-out)"
    )
    run_demo.add_argument("--timeout", type=float, default=None, help="seconds to wait for an alert (600; S3 sources: 1800)")
    run_demo.set_defaults(run=demo.demo)
    run_up = commands.add_parser("up", parents=[batch], help="start the stack and chalice local until stopped")
    run_up.add_argument("--port", type=int, default=8000, help="chalice local's port (default 8000)")
    run_up.add_argument(
        "--clock-speed", type=float, default=0, help="fire schedules at their slots, time running N x faster (0: off)"
    )
    run_up.add_argument("--fire", action="append", default=[], metavar="NAME", help="fire this definition once up")
    run_up.set_defaults(run=up.up)
    arguments = parser.parse_args(argv)
    try:
        return arguments.run(arguments)
    except ConfigError as error:  # the definitions file or a setting: what `batchdrain validate` reports
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except BatchdrainError as error:  # cannot run as asked (a busy port, an unknown definition, a missing file)
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
