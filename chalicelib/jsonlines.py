"""Where each field of a JSON document starts: so an error can say `file:line: field: what is wrong`.

`field_lines(text)` maps a field's path, written as the definitions' errors write it
(`definitions[0].task_options.scale`), to the 1-based line of its key (of the value,
for list items). Only read when a problem is reported; the document is parsed by `json`.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def field_lines(text: str) -> dict[str, int]:
    """Path -> line of every field and list item of a valid JSON document (the root is "")."""
    lines: dict[str, int] = {}
    newlines = [index for index, char in enumerate(text) if char == "\n"]

    def line_at(position: int) -> int:
        low, high = 0, len(newlines)
        while low < high:
            middle = (low + high) // 2
            if newlines[middle] < position:
                low = middle + 1
            else:
                high = middle
        return low + 1

    def skip(position: int) -> int:
        return _WHITESPACE.match(text, position).end()  # type: ignore[union-attr]

    def value(position: int, path: str) -> int:
        position = skip(position)
        lines.setdefault(path, line_at(position))
        char = text[position]
        if char == "{":
            position = skip(position + 1)
            if text[position] == "}":
                return position + 1
            while True:
                key_at = position
                key, position = scanstring(text, position + 1)
                child = f"{path}.{key}" if path else key
                lines[child] = line_at(key_at)
                position = skip(position)  # the colon
                position = value(position + 1, child)
                position = skip(position)
                if text[position] == "}":
                    return position + 1
                position = skip(position + 1)  # the comma
        if char == "[":
            position = skip(position + 1)
            if text[position] == "]":
                return position + 1
            index = 0
            while True:
                position = value(position, f"{path}[{index}]")
                position = skip(position)
                if text[position] == "]":
                    return position + 1
                position, index = position + 1, index + 1
        if char == '"':
            return scanstring(text, position + 1)[1]
        return _SCALAR.match(text, position).end()  # type: ignore[union-attr]

    value(0, "")
    return lines


def line_of(lines: dict[str, int], path: str) -> int:
    """The line of `path`, or of its nearest ancestor that has one (a missing field: its object's line)."""
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", path)
    return lines.get("", 1)


def syntax_error_line(text: str, error: json.JSONDecodeError) -> tuple[int, str]:
    """The line to blame for a JSON syntax error, and what to say: a trailing comma is blamed on its own line.

    json reports where it expected the next token; after `,` that is the line below the comma.
    """
    before = text[: error.pos].rstrip()
    if before.endswith(",") and error.msg.startswith(("Expecting property name", "Expecting value")):
        return before.count("\n") + 1, "a comma before the closing bracket (JSON allows no trailing comma)"
    return error.lineno, f"not valid JSON: {error.msg} (column {error.colno})"
