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
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from batchdrain_deploy import DeployError
from batchdrain_deploy.package import deployed_environment
from batchdrain_deploy.project import OUTPUT_ENVIRONMENT, PROJECT_DIR, Project
from chalicelib import aws, config, jsonlines, sizing
from chalicelib.config import Definition, EventSourceSettings, definitions_file, shown_path
from chalicelib.sources import is_object_source, resolve_uri, split_uri


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
    # The local stage's API token is another stand-in: the local stack makes one when it starts.
    stand_ins = {variable: f"not-deployed-yet:{variable}" for variable in [*OUTPUT_ENVIRONMENT.values(), "API_TOKEN"]}
    stand_ins["INBOX_URI"] = "s3://not-deployed-yet/inbox/"  # checked as a URI (the local stack makes its own)
    with deployed_environment({**stand_ins, **stage}):
        sys.path.insert(0, str(PROJECT_DIR))  # the user's task modules import from the project
        reach = not args.offline and have_credentials()
        definitions, problems = validation.problems(args.file)
        if reach and not problems:
            problems = reachability_problems(definitions_file(args.file), definitions)
        if not problems:
            budget, max_message_bytes = EventSourceSettings.from_env(), config.max_message_bytes()
            choices = {name: sizing.choose_k(definition, budget, max_message_bytes) for name, definition in definitions.items()}
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    checked = "S3 reachable" if reach else "S3 not checked (" + ("--offline" if args.offline else "no AWS credentials") + ")"
    print(f"{shown_path(definitions_file(args.file))}: {len(definitions)} definition(s) valid for stage {args.stage!r}; {checked}")
    for definition in definitions.values():
        source = definition.source.uri or f"{definition.source.count:,} generated items"
        print(f"  {definition.name}: {definition.schedule}, {definition.source.type} {source}, task {definition.task}")
        print(f"    {choices[definition.name].describe()}")
    return 0


def reachability_problems(path: Path, definitions: dict[str, Definition]) -> list[str]:
    """A line per bucket or object the definitions name that S3 says is not there, or may not be read or written."""
    text = path.read_text(encoding="utf-8")
    lines = jsonlines.field_lines(text)
    positions = {raw.get("name"): n for n, raw in enumerate(json.loads(text)["definitions"])}
    shown = shown_path(path)
    found = []
    for name, definition in definitions.items():
        where = f"definitions[{positions[name]}]"
        for field, problem in _unreachable(definition):
            located = f"{where}.{field}"
            found.append(f"{shown}:{jsonlines.line_of(lines, located)}: {located}: {problem}")
    return found


def _unreachable(definition: Definition) -> list[tuple[str, str]]:
    """(field, what is wrong) for what the definition reads and writes in S3."""
    checks: list[tuple[str, str, str | None]] = []  # field, bucket, key (None: the bucket only)
    source = definition.source
    if is_object_source(source):
        uri = resolve_uri(source, datetime.now(timezone.utc))
        bucket, key = split_uri(uri)
        # A key with placeholders names tomorrow's object too: only its bucket must be there now.
        exact = source.type != "s3-prefix" and uri == source.uri
        checks.append(("source.uri", bucket, key if exact else None))
    if definition.results is not None:
        checks.append(("results.bucket", definition.results.bucket, None))
    problems = []
    for field, bucket, key in checks:
        problem = _head(bucket, key)
        if problem:
            problems.append((field, problem))
    return problems


def _head(bucket: str, key: str | None) -> str | None:
    s3: Any = aws.client("s3")
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    try:
        if key is None:
            s3.head_bucket(Bucket=bucket)
        else:
            s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            return f"{where}: not found"
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"{where}: access denied (these credentials may not read it)"
        return f"{where}: {code}"
    except BotoCoreError as error:
        return f"{where}: not checked ({error})"
    return None


def have_credentials() -> bool:
    """Whether boto3 finds credentials: S3 is checked only then (a laptop without AWS checks the files alone)."""
    return aws.session().get_credentials() is not None
