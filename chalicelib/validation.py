"""Everything a deploy checks before anything is created, as lines a user can act on.

`problems()` reads the definitions file and the settings exactly as the app does at
import (chalicelib.config). Each problem is one line: `file:line: field: what` for the
definitions file, `settings: what` for the environment. `batchdrain validate` (which
also checks that the buckets and objects the definitions name can be reached), the
local stack and both deploy routes print the same lines.
"""

from __future__ import annotations

import os

from chalicelib.config import Definition, EventSourceSettings, Settings, definition_problems
from chalicelib.errors import ConfigError


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


def problems(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Definition], list[str]]:
    """The valid definitions, and every problem of the definitions file and the settings."""
    event_sources, found = settings_problems()
    definitions, definition_lines = definition_problems(path, event_sources)
    return definitions, found + definition_lines


