"""Which definitions file the local stack runs, and the overrides a user asks for.

The file is the one the user names (`--definitions`, `make ... DEFINITIONS=path`), else
`BATCHDRAIN_DEFINITIONS`, else `batchdrain_definitions.json` at the project root, else
the shipped example `chalicelib/batches.json`: the same order the app follows.

The stack runs the file as written. Overrides (`ITEMS=`, `K=`, `SCALE=`) are applied
only when given, to one definition, and each is printed (`override: items_per_message
20 -> 50`). They are checked before anything starts, and a problem names the user's
file and the override, never the copy the stack then loads. The one exception to "as
written" is the shipped example, whose items sleep up to a second each: the demo and
`make local` run it sped up (SHIPPED_EXAMPLE_SIZING, unless the user gives K or SCALE),
printed as overrides too.
"""

from __future__ import annotations

import copy
import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from chalicelib import config
from chalicelib.errors import ConfigError

SHIPPED_DEFINITIONS = config.DEFAULT_DEFINITIONS_FILE


@dataclass(frozen=True)
class Overrides:
    """What the user asked to change in one definition (None: as written).

    `items`: a random source's count. `k`: items_per_message. `scale`: the sleep task's
    scale (and item_seconds with it, so the processor's budget check still holds).
    """

    items: int | None = None
    k: int | None = None
    scale: float | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.items, self.k, self.scale))

    def describe(self) -> str:
        """As the user wrote them: 'ITEMS=600 K=50'."""
        given = (("ITEMS", self.items), ("K", self.k), ("SCALE", self.scale))
        return " ".join(f"{name}={value:g}" for name, value in given if value is not None)


# The shipped example sleeps up to 1 s an item: 10,000 items would take about 40 minutes on 4
# local workers. Sped up 500 times (item_seconds with it, so K grows as batchdrain chooses it), it takes seconds.
SHIPPED_EXAMPLE_SIZING = Overrides(scale=0.002)
SHIPPED_EXAMPLE_NOTE = "the shipped example, sped up for the local stack (your own definitions run as written):"


# Which file runs, and how it is named, are the app's own rules (one lookup for the app, the stack and validate).
definitions_file = config.definitions_file
shown = config.shown_path


def is_shipped(path: Path) -> bool:
    return path.resolve() == SHIPPED_DEFINITIONS.resolve()


def read_document(path: Path) -> dict[str, Any]:
    """The file as JSON, after the app's own loader has accepted it (the error names `path`)."""
    from chalicelib.config import load_definitions

    load_definitions(path)
    return json.loads(path.read_text(encoding="utf-8"))


def names(document: dict[str, Any]) -> list[str]:
    return [entry["name"] for entry in document["definitions"]]


def pick(document: dict[str, Any], path: Path | str, name: str | None) -> str:
    """The definition `name`, or the file's first if None; an unknown name is a ConfigError listing the file's."""
    have = names(document)
    if name is None:
        return have[0]
    if name not in have:
        raise ConfigError(f"{path}: no definition {name!r} (it has: {', '.join(have)})")
    return name


@dataclass(frozen=True)
class Change:
    """One overridden field of one definition, for the `override:` line."""

    definition: str
    field: str
    old: Any
    new: Any

    def line(self, named: bool = False) -> str:
        """`override: items_per_message 20 -> 50` (with the definition's name before the field if `named`)."""
        field = f"{self.definition} {self.field}" if named else self.field
        return f"override: {field} {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value)


def apply(document: dict[str, Any], path: Path, name: str, overrides: Overrides) -> tuple[dict[str, Any], list[Change]]:
    """A copy of `document` with `overrides` applied to definition `name`, checked as the app checks it.

    A value the app would refuse raises ConfigError naming `path`, the override and the field.
    """
    from chalicelib.config import parse_definition
    from chalicelib.tasks import registered_tasks

    changed = copy.deepcopy(document)
    position = names(changed).index(name)
    entry = changed["definitions"][position]
    changes: list[Change] = []

    def set_field(holder: dict[str, Any], key: str, label: str, value: Any) -> None:
        changes.append(Change(name, label, holder.get(key), value))
        holder[key] = value

    source = entry.get("source", {})
    if overrides.items is not None:
        if source.get("type") != "random":
            raise ConfigError(
                f"{path}: ITEMS={overrides.items} sets the item count of a random source; {name!r} reads "
                f"{source.get('uri')} (ITEMS sizes the sample data only, with SAMPLE_DATA=1)"
            )
        set_field(source, "count", "source.count", overrides.items)
    if overrides.k is not None:
        set_field(entry, "items_per_message", "items_per_message", overrides.k)
    if overrides.scale is not None:
        if entry.get("task") != "sleep":
            raise ConfigError(f"{path}: SCALE={overrides.scale:g} speeds up the sleep task; {name!r} runs {entry.get('task')!r}")
        options = entry.setdefault("task_options", {})
        set_field(options, "scale", "task_options.scale", overrides.scale)
        # The sleep task takes at most max_value ms x scale: the processor's budget check needs it.
        seconds = max(source.get("max_value", 1000) * overrides.scale / 1000, 0.001)
        set_field(entry, "item_seconds", "item_seconds", seconds)
    parse_definition(entry, f"{path} with {overrides.describe()}: definitions[{position}]", set(registered_tasks()))
    return changed, changes


def apply_to_line_sources(document: dict[str, Any], path: Path, k: int) -> tuple[dict[str, Any], list[Change]]:
    """`K=` of the S3 demo: items_per_message of every line source (s3-jsonl, s3-csv) of the file."""
    changes: list[Change] = []
    for entry in document["definitions"]:
        if entry.get("source", {}).get("type") in ("s3-jsonl", "s3-csv"):
            document, changed = apply(document, path, entry["name"], Overrides(k=k))
            changes += changed
    return document, changes


def with_overrides(
    document: dict[str, Any], path: Path, name: str | None, overrides: Overrides
) -> tuple[dict[str, Any], list[Change], str | None]:
    """The document to run, the overrides applied to it, and a note to print before them (or None).

    `name` is the definition the overrides apply to (None: the file's only one). With no
    overrides the document is as written, except the shipped example: SHIPPED_EXAMPLE_SIZING
    fills in what the user did not give.
    """
    note = None
    if is_shipped(path):  # what the user gave, the rest sped up
        sizing = SHIPPED_EXAMPLE_SIZING
        overrides = Overrides(
            overrides.items, overrides.k if overrides.k is not None else sizing.k,
            sizing.scale if overrides.scale is None else overrides.scale,
        )
        note = SHIPPED_EXAMPLE_NOTE
    if not overrides:
        return document, [], None
    if name is None and len(names(document)) > 1:
        raise ConfigError(
            f"{path}: {overrides.describe()} applies to one definition; name it with DEFINITION= "
            f"(it has: {', '.join(names(document))})"
        )
    changed, changes = apply(document, path, pick(document, path, name), overrides)
    return changed, changes, note


@contextmanager
def loadable(document: dict[str, Any], path: Path, changes: list[Change]) -> Iterator[Path]:
    """The file the stack's app loads: `path` itself, or with overrides a copy (same name, new temporary directory).

    Everything in a copy was checked by `apply`, so no error names it; it is removed afterwards.
    """
    if not changes:
        yield path
        return
    directory = Path(tempfile.mkdtemp(prefix="batchdrain-overrides-"))
    copy_path = directory / path.name
    copy_path.write_text(json.dumps(document, indent=2))
    try:
        yield copy_path
    finally:
        copy_path.unlink(missing_ok=True)
        directory.rmdir()
