"""`batchdrain`: one parser for every command; each command's options and work live in its own module."""

from __future__ import annotations

import argparse
from typing import Sequence

from batchdrain_cli import add, cancel, cost, failures, fire, listing, redrive, seal, status, submit, validate, wait

# Command name -> its module (`add_parser(commands)`, `run(args, parser)`), in the order --help lists them.
# An API command (client.py) is one module: add_parser (its options + add_api_options) and run (run_api).
COMMANDS = {
    "validate": validate,
    "fire": fire,
    "cost": cost,
    "submit": submit,
    "add": add,
    "seal": seal,
    "status": status,
    "list": listing,
    "wait": wait,
    "failures": failures,
    "redrive": redrive,
    "cancel": cancel,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `batchdrain` parser and each command's own (which reports errors in that command's options)."""
    parser = argparse.ArgumentParser(prog="batchdrain", description="batchdrain's command line (never deployed).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    return parser, {name: module.add_parser(commands) for name, module in COMMANDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args, subparsers[args.command])
