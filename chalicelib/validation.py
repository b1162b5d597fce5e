"""Everything a deploy checks before anything is created, as lines a user can act on.

`problems()` reads the definitions file and the settings exactly as the app does at
import (chalicelib.config) and, when asked, whether the buckets and objects the
definitions name can be reached now. Each problem is one line: `file:line: field: what`
for the definitions file, `settings: VARIABLE: what` for the environment.
`batchdrain validate`, the local stack and both deploy routes print the same lines.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws, jsonlines
from chalicelib.config import Definition, EventSourceSettings, Settings, definition_problems, definitions_file, shown_path
from chalicelib.errors import ConfigError
from chalicelib.sources import is_object_source, resolve_uri, split_uri


def settings_problems() -> tuple[EventSourceSettings | None, list[str]]:
    """The event-source settings (None if they are invalid) and a line per setting that is missing or out of range."""
    problems = []
    event_sources = None
    for reader in (EventSourceSettings.from_env, Settings.from_env):
        try:
            found = reader()
        except ConfigError as error:
            problems.append(f"settings: {error}")
            continue
        if isinstance(found, EventSourceSettings):
            event_sources = found
    return event_sources, problems


def problems(path: str | os.PathLike[str] | None = None, reach: bool = False) -> tuple[dict[str, Definition], list[str]]:
    """The valid definitions, and every problem of the definitions file, the settings and (with `reach`) S3."""
    event_sources, found = settings_problems()
    definitions, definition_lines = definition_problems(path, event_sources)
    found += definition_lines
    if reach and not definition_lines:
        found += reachability_problems(definitions_file(path), definitions)
    return definitions, found


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
