"""docs/local-stack.md shows only commands the tests run as written (the port number aside)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration import test_demo, test_make_local

PAGE = Path(__file__).resolve().parents[2] / "docs" / "local-stack.md"


def test_every_command_the_page_shows_is_one_a_test_runs_and_every_one_they_run_is_shown():
    blocks = re.findall(r"```console\n(.*?)```", PAGE.read_text(), re.S)
    shown = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]

    assert sorted(set(shown)) == sorted(set(test_demo.DOCUMENTED + test_make_local.DOCUMENTED))


def test_the_pages_script_is_the_one_the_script_test_runs():
    script = test_make_local.documented_script()
    assert "make local DEFINITIONS=docs/local-stack/visits.json" in script and "batchdrain fire count-visits --wait" in script


def test_the_page_speaks_of_the_product_only():
    text = PAGE.read_text()
    assert not re.search(r"\bissue\b|\.\./|origin design", text, re.I)
    for path in re.findall(r"`((?:docs|examples|chalicelib)/[\w./-]+)`", text):
        assert (PAGE.parents[1] / path).exists(), path
