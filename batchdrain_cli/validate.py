"""`batchdrain validate [FILE]`: a definitions file and a stage's settings, checked as a deploy checks them.

Everything the app checks when it is imported (the definitions, their task modules, every
setting, the processor's time budget), and, when AWS credentials are found, whether the
buckets and objects the definitions name can be reached. Each problem is one line,
`file:line: field: what is wrong`, and the exit status is 1; nothing else is printed to
stderr (no traceback). `make validate` runs it; demo, local, package and deploy run the
same checks first and stop with the same lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from batchdrain_deploy import DeployError
from batchdrain_deploy.project import OUTPUT_ENVIRONMENT, PROJECT_DIR, Project


def add_parser(commands: Any) -> argparse.ArgumentParser:
    validate = commands.add_parser(
        "validate",
        help="check a definitions file and a stage's settings as a deploy would",
        description=__doc__.split("\n\n")[0],
    )
    validate.add_argument(
        "file", nargs="?", help="the definitions file (default: BATCHDRAIN_DEFINITIONS, else batchdrain_definitions.json, else the shipped examples)"
    )
    validate.add_argument("--stage", default="dev", help="the .chalice/config.json stage whose settings apply (default: dev)")
    validate.add_argument("--offline", action="store_true", help="do not check that S3 buckets and objects can be reached")
    return validate


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from chalicelib import validation

    try:
        stage = Project(PROJECT_DIR).stage_environment(args.stage)
    except DeployError as error:
        parser.error(str(error))
    # As a deploy imports the app: the stage's settings over this shell's, and stand-ins for the
    # resource names a first deploy records (only their presence matters before it).
    stand_ins = {variable: f"not-deployed-yet:{variable}" for variable in OUTPUT_ENVIRONMENT.values()}
    with _deployed_environment({**stand_ins, **stage}):
        sys.path.insert(0, str(PROJECT_DIR))  # the user's task modules import from the project
        reach = not args.offline and validation.have_credentials()
        definitions, problems = validation.problems(args.file, reach=reach)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    from chalicelib.config import definitions_file, shown_path

    checked = "S3 reachable" if reach else "S3 not checked (" + ("--offline" if args.offline else "no AWS credentials") + ")"
    print(f"{shown_path(definitions_file(args.file))}: {len(definitions)} definition(s) valid for stage {args.stage!r}; {checked}")
    for definition in definitions.values():
        source = definition.source.uri or f"{definition.source.count:,} generated items"
        print(f"  {definition.name}: {definition.schedule}, {definition.source.type} {source}, task {definition.task}")
    return 0


@contextmanager
def _deployed_environment(values: Mapping[str, str]) -> Iterator[None]:
    """The settings a deployed function gets: the stage's, not this shell's (the shell does not reach Lambda)."""
    from chalicelib.config import SETTING_NAMES

    saved = dict(os.environ)
    for name in SETTING_NAMES:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
