"""`make demo`: one cron batch of a definition, end to end on the local stack, and its alert.

    python -m batchdrain_local demo [--definitions FILE] [--definition NAME] [--items N --k K --scale S]
        [--upload FILE[=s3://bucket/key] ...] [--sample-data]
    python -m batchdrain_local demo --source s3 [--items N] [--objects N] [--segment-bytes B] [--k K]

The first form runs one definition of the definitions file as written (the file's first
unless `--definition` names another; batchdrain_local.definitions says which file, and
how overrides are applied and printed): the stack creates its buckets, puts the user's
`--upload`s and, if asked, sample data there (batchdrain_local.data), fires the
definition's schedule through its real handler, waits for the alert and prints it
with the run's figures (batchdrain_local.runs).

`--source s3` runs every definition of examples/s3-digest.json with sample data: an
s3-prefix source digested by the s3-object-digest task and a JSON Lines export read
in segments (SEGMENT_BYTES 4 MiB, to show the planners fanning out), both with results.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from batchdrain_local import data, runs
from batchdrain_local import definitions as files
from batchdrain_local.stack import IGNORED_SETTINGS, PROJECT_DIR, LocalStack, StackOptions, shell_settings
from chalicelib import sources
from chalicelib.errors import ConfigError

EXAMPLES_FILE = PROJECT_DIR / "examples" / "s3-digest.json"
# The default 64 MiB would keep a 1M-line export (about 80 MB) in two segments; 4 MiB
# shows the planners fanning out (about 20 segments).
DEMO_SEGMENT_BYTES = 4 * 1024 * 1024


def demo(arguments: argparse.Namespace) -> int:
    """See the module docstring. Returns the exit status."""
    if arguments.source == "s3":
        return _s3_examples(arguments)
    path = files.definitions_file(arguments.definitions)
    document = files.read_document(path)
    name = files.pick(document, path, arguments.definition)
    uploads = [data.Upload.parse(text) for text in arguments.upload]
    overrides = files.Overrides(None if arguments.sample_data else arguments.items, arguments.k, arguments.scale)
    document, changes, note = files.with_overrides(document, path, name, overrides)
    return _run(path, document, [name], changes, note, arguments, uploads, arguments.sample_data, {}, "WARNING")


def _s3_examples(arguments: argparse.Namespace) -> int:
    path = Path(arguments.definitions or EXAMPLES_FILE)
    document = files.read_document(path)
    changes: list[files.Change] = []
    if arguments.k is not None:
        document, changes = files.apply_to_line_sources(document, path, arguments.k)
    segment_bytes = arguments.segment_bytes or DEMO_SEGMENT_BYTES
    names = [entry["name"] for entry in document["definitions"] if sources.is_object_source(entry["source"])]
    if not names:
        raise ConfigError(f"{path} has no definition with an S3 source")
    # The sample export's broken line fails on purpose: the alert and failures.jsonl show it.
    return _run(path, document, names, changes, None, arguments, [], True, {"SEGMENT_BYTES": str(segment_bytes)}, "ERROR")


def _run(
    path: Path,
    document: dict,
    names: list[str],
    changes: list[files.Change],
    note: str | None,
    arguments: argparse.Namespace,
    uploads: list[data.Upload],
    sample_data: bool,
    environment: dict[str, str],
    log_level: str,
) -> int:
    """Start the stack on `document` (the file itself when nothing changed), fill S3, run each of `names`."""
    started = time.monotonic()
    ignored = shell_settings(os.environ)
    with files.loadable(document, path, changes) as loaded:
        options = StackOptions(
            definitions_file=loaded,
            processor_concurrency=arguments.concurrency,
            extra_environment=environment,
            app_log_level=log_level,
        )
        with LocalStack(options) as stack:
            assert stack.resources is not None and stack.app_module is not None
            print(f"local stack up: AWS endpoint {stack.endpoint_url} (moto server), table {stack.resources.table_name}")
            print(f"definitions: {files.shown(path)}")
            if ignored:
                print(IGNORED_SETTINGS.format(", ".join(ignored)))
            if note:
                print(note)
            for change in changes:
                print(change.line(named=len(names) > 1 or len(document["definitions"]) > 1))
            definitions = {name: stack.app_module.DEFINITIONS[name] for name in names}
            slot = datetime.now(timezone.utc).replace(second=0, microsecond=0)
            sample = data.prepare(
                stack.client("s3"), definitions, slot, out=lambda label, text: print(f"{label}: {text}"),
                uploads=uploads, name=names[0] if len(names) == 1 else None, sample_data=sample_data,
                objects=arguments.objects, lines=arguments.items or data.DEFAULT_LINES, bad_lines=arguments.bad_lines,
            )
            for name, definition in definitions.items():
                source = definition.source
                what = f"{source.type} {sources.resolve_uri(source, slot)}" if sources.is_object_source(source) else f"{source.count:,} items"
                print()
                print(
                    f"firing cron batch '{name}' ({definition.schedule}) for {slot:%Y-%m-%dT%H:%MZ}: {what}, "
                    f"K={definition.items_per_message or 'auto'}, task {definition.task}",
                    flush=True,
                )
                timeout = arguments.timeout or (1800 if sources.is_object_source(source) else 600)
                run = runs.run_batch(stack, name, slot, timeout, lambda line: print(line, flush=True))
                runs.show(stack, run, sample)
            print()
            print(f"peak RSS of this process (moto server, pollers and handlers): {runs.peak_rss_mb():,.0f} MB")
    print(f"local stack stopped; demo took {time.monotonic() - started:.1f} s in all")
    return 0
