"""One precedence for settings: the stage's, then the defaults; the shell never (as on Lambda)."""

from __future__ import annotations

import os

import pytest

from batchdrain_local.stack import LocalStack, StackOptions, shell_settings, stage_environment


def test_the_shells_settings_are_named_and_ignored_by_the_local_stack_as_a_deployed_function_never_sees_them(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("TABLE_NAME", "my-own-table")
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", "")
    assert shell_settings(os.environ) == ["ITEM_MAX_ATTEMPTS", "TABLE_NAME"]

    with LocalStack(StackOptions()) as stack:
        assert stack.resources is not None
        assert stack.resources.table_name == stage_environment("local")["TABLE_NAME"] == os.environ["TABLE_NAME"]
        assert "ITEM_MAX_ATTEMPTS" not in stage_environment("local") and "ITEM_MAX_ATTEMPTS" not in os.environ

    assert os.environ["TABLE_NAME"] == "my-own-table" and os.environ["ITEM_MAX_ATTEMPTS"] == "9"  # the shell's, back
