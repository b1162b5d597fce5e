"""The README and docs/*.md: short enough to read, about the product only, and true as written.

The pages checked are README.md and every docs/*.md. The rules:

(a) README.md is at most 300 lines: a newcomer reads it in ten minutes.
(b) No page names an issue number ("issue 9", "Issue 11's targets", "#18") or a file
    outside the repository (`../shared/...`, the team's notes).
(c) Every relative link `[text](target)` points to a file of the repository that exists,
    and a `#anchor` (alone, or after a .md file) to a heading of that page, as GitHub
    slugs headings: lowercase; every character that is not a letter, a digit, `_`, `-`
    or a space dropped; spaces become `-`; a repeated slug gets `-1`, `-2`, ...
(d) Every command a page shows is one the test suite runs. A command is shown when,
    inside a fenced code block (```):
      - the block's language is bash, sh or shell: every line that is not blank and not
        a comment is a command;
      - any other block (console, text, none): a line starting with `$ ` is a command
        (the rest of it), and the lines after it, up to the next `$ ` or the end of the
        block, are its output.
    A trailing ` # comment` is dropped, a line ending in `\\` goes on on the next, and
    spaces are collapsed. Inline code in prose and tables is not a shown command: a
    command the suite cannot run (real AWS, hours of benchmark) is written there.
    Each shown command must match an entry of COMMANDS: the same words, or, for an entry
    ending in ` ...`, the same first words followed by any arguments. Each entry names
    the test that runs the command (`file::function`, which must exist), and a make
    target's entry names what its recipe in the Makefile runs (which must be there), so
    the test and the command cannot drift apart. The `batchdrain` command is cheap: this
    file runs every shown `batchdrain ...` in-process and checks that it exits 0 and
    prints every output line shown (a line holding `[…` marks a cut:
    `[…]`, `[… timestamps …]`).
(e) Every ```json block parses; one that is a whole definition is a valid one. Every
    ```python block runs as written, on its own (its tasks registered apart from the real
    registry, and each one's options validator called once, on no options).
(f) Every test function a page names (`test_...`, not a `test_*.py` file) exists under
    tests/, and every repository path it names in inline code (`chalicelib/processor.py`,
    `tests/deploy_support.moto_accepts_swagger_2`) exists, but for generated output
    (`out/`, `.venv/`, `.chalice/deployed/`).
(g) The local stack's page (docs/local-stack.md) shows the commands its integration
    tests run as written (tests/integration/test_demo.py and test_make_local.py keep
    them in DOCUMENTED, and run the page's script): those match the entry
    LOCAL_STACK_PAGE, and tests/unit/test_docs_local_stack.py checks the page and the
    lists are the same.
(h) The README's own job (its task and definitions) is examples/visits/ as written.
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchdrain_cli import cli
from chalicelib import config, tasks
from chalicelib.errors import TaskOptionsError
from tests.integration import test_demo, test_make_local

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300


@dataclass(frozen=True)
class Runs:
    """The test that runs a shown command, and for a make target what its recipe must run."""

    test: str
    recipe: str | None = None


# Shown command (or `prefix ...`) -> the test that runs it. When you show a new command, add
# it here with the test that runs that very entry point, or write it in prose instead.
COMMANDS: dict[str, Runs] = {
    "make setup": Runs("tests/unit/test_cost.py::test_make_setup_installs_the_command", "pip install"),
    "make test": Runs("tests/unit/test_docs.py::test_make_test_runs_every_test_under_tests", "-m pytest"),
    "make demo": Runs(
        "tests/integration/test_demo.py::test_make_demo_runs_the_shipped_example_sped_up_to_one_alert_and_says_what_it_changed",
        "-m batchdrain_local demo",
    ),
    "make demo SOURCE=s3": Runs(
        "tests/integration/test_s3_demo.py::"
        "test_make_demo_source_s3_prints_both_alerts_the_manifests_the_checked_digests_and_the_figures",
        "-m batchdrain_local demo",
    ),
    "make demo DEFINITIONS=examples/visits/definitions.json UPLOAD=examples/visits/visits.jsonl": Runs(
        "tests/integration/test_demo.py::"
        "test_the_readmes_own_job_runs_as_written_and_names_each_failure_by_its_code_line_and_its_export_line",
        "-m batchdrain_local demo",
    ),
    "make validate": Runs(
        "tests/unit/test_validate.py::test_the_shipped_examples_are_valid_and_say_what_they_define",
        "-m batchdrain_cli validate",
    ),
    "make package STAGE=dev": Runs(
        "tests/integration/test_packaging.py::test_one_template_holds_the_resources_and_the_app",
        "-m batchdrain_deploy package",
    ),
    "make check-templates STAGE=dev": Runs(
        "tests/integration/test_packaging.py::test_both_templates_pass_cfn_lint_and_checkov",
        "-m batchdrain_deploy check",
    ),
    # test_deploy_route_a.py runs `python -m batchdrain_deploy deploy --stage dev` (first with
    # --table-deletion-protection false, then again without it) and `... destroy --stage dev`
    # against a moto server: what these make targets run after `make validate`.
    "make deploy STAGE=dev TABLE_DELETION_PROTECTION=false": Runs(
        "tests/integration/test_deploy_route_a.py::test_deploy_runs_every_step_in_order", "-m batchdrain_deploy deploy"
    ),
    "make deploy STAGE=dev": Runs(
        "tests/integration/test_deploy_route_a.py::test_deploying_again_changes_nothing_and_keeps_the_settings",
        "-m batchdrain_deploy deploy",
    ),
    "make destroy STAGE=dev": Runs(
        "tests/integration/test_deploy_route_a.py::test_destroy_removes_the_app_and_the_stack",
        "-m batchdrain_deploy destroy",
    ),
    # Run here, in-process, exactly as shown (test_every_batchdrain_command_shown_runs_as_shown).
    "batchdrain ...": Runs("tests/unit/test_docs.py::test_every_batchdrain_command_shown_runs_as_shown"),
    ".venv/bin/batchdrain ...": Runs("tests/unit/test_docs.py::test_every_batchdrain_command_shown_runs_as_shown"),
    "python -m batchdrain_cli ...": Runs("tests/unit/test_docs.py::test_every_batchdrain_command_shown_runs_as_shown"),
}
IN_PROCESS = ("batchdrain", ".venv/bin/batchdrain", "python -m batchdrain_cli")
CUT = "[…"  # a cut in shown output: `[…]` or `[… what was cut …]`
ISSUE_NUMBER = re.compile(r"\b(?:issues?|tickets?|pull requests?|PRs?)\s*#?\d+|(?<![\w&#])#\d+\b", re.I)
OUTSIDE = re.compile(r"\.\./shared|AWS_FACTS|\bDESIGN\.md|/work/|\.\./\.\./")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
GENERATED = (".venv/", "out/", ".chalice/deployed/", "vendor/")


# -- reading pages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Shown:
    page: Path
    line: int
    command: str
    output: tuple[str, ...]

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.command}"


def blocks(page: Path) -> list[Block]:
    found, current, start, language = [], None, 0, ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current, start, language = [], number, line.strip()[3:].strip().lower()
            else:
                found.append(Block(page, start, language, tuple(current)))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{page.name}:{start}: a code block is never closed"
    return found


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links and headings live here)."""
    kept, fenced = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        kept.append("" if fenced else line)
    return "\n".join(kept)


def _command_text(lines: list[str]) -> str:
    joined = " ".join(line.rstrip().removesuffix("\\").strip() for line in lines)
    return " ".join(re.sub(r"\s#\s.*$", "", joined).split())


def shown_commands(page: Path) -> list[Shown]:
    """Every command shown in the page's code blocks, by rule (d) of the module docstring."""
    shown = []
    for block in blocks(page):
        lines = [line.strip() for line in block.lines]
        shell = block.language in ("bash", "sh", "shell")
        index = 0
        while index < len(lines):
            line = lines[index]
            is_command = line.startswith("$ ") or (shell and line and not line.startswith("#"))
            if not is_command:
                index += 1
                continue
            start, parts = index, [line.removeprefix("$ ")]
            while parts[-1].endswith("\\") and index + 1 < len(lines):
                index += 1
                parts.append(lines[index])
            index += 1
            output = []
            if not shell:
                while index < len(lines) and not lines[index].startswith("$ "):
                    output.append(block.lines[index])
                    index += 1
            shown.append(Shown(page, block.line + 1 + start, _command_text(parts), tuple(output)))
    return shown


LOCAL_STACK_PAGE = "run as written by the local stack's tests (rule g)"


def run_by_local_stack_tests() -> set[str]:
    script = [line.strip() for line in test_make_local.documented_script().splitlines() if line.strip()]
    return {*test_demo.DOCUMENTED, *test_make_local.DOCUMENTED, *(_command_text([line]) for line in script)}


def entry_for(command: str) -> str | None:
    if command in run_by_local_stack_tests():
        return LOCAL_STACK_PAGE
    for key in COMMANDS:
        if key.endswith(" ...") and (command + " ").startswith(key.removesuffix("...")):
            return key
        if command == key:
            return key
    return None


def slug(heading: str) -> str:
    text = heading.strip().lower()
    kept = "".join(
        char for char in text if char in " -_" or unicodedata.category(char)[0] in ("L", "N") or unicodedata.category(char) == "Mn"
    )
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))
    return names


def run_in_process(command: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    words = shlex.split(command)
    for prefix in sorted(IN_PROCESS, key=len, reverse=True):
        if words[: len(prefix.split())] == prefix.split():
            arguments = words[len(prefix.split()) :]
            break
    else:
        raise AssertionError(f"not a batchdrain command: {command}")
    capsys.readouterr()
    try:
        code = cli.main(arguments)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out + err


# -- (a) and (b) -------------------------------------------------------------------------------


def test_the_readme_is_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_page_names_an_issue_number_or_a_file_outside_the_repository(page: Path):
    problems = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for pattern in (ISSUE_NUMBER, OUTSIDE):
            for match in pattern.finditer(line):
                problems.append(f"{page.name}:{number}: {match.group(0)!r} in: {line.strip()}")
    assert not problems, "\n".join(problems)


# -- (c) links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path):
    problems = []
    for number, line in enumerate(prose(page).splitlines(), 1):
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.is_relative_to(ROOT) or not linked.exists():
                problems.append(f"{page.name}:{number}: {target}: no such file in the repository")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                problems.append(f"{page.name}:{number}: {target}: {linked.name} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_slugs_are_githubs():
    assert slug("Route A: `chalice deploy` (`make deploy`)") == "route-a-chalice-deploy-make-deploy"
    assert slug("Worked example: `make demo SOURCE=s3`") == "worked-example-make-demo-sources3"
    assert slug("Proof: fault injection and `make chaos`") == "proof-fault-injection-and-make-chaos"
    assert slug("What an idle deployment costs") == "what-an-idle-deployment-costs"


# -- (d) commands ------------------------------------------------------------------------------


def test_the_command_rule_reads_shell_blocks_and_dollar_lines(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nmake demo   # a comment\n# only a comment\nmake deploy STAGE=dev \\\n    TABLE_DELETION_PROTECTION=false\n```\n"
        "```\n$ batchdrain cost --items 10\nout one\n[…]\n$ make test\n```\n"
        "```json\n{\"$ not\": 1}\n```\n"
    )
    assert [(shown.command, shown.output) for shown in shown_commands(page)] == [
        ("make demo", ()),
        ("make deploy STAGE=dev TABLE_DELETION_PROTECTION=false", ()),
        ("batchdrain cost --items 10", ("out one", "[…]")),
        ("make test", ()),
    ]
    assert entry_for("batchdrain cost --items 10") == "batchdrain ..."
    assert entry_for("make deploy STAGE=dev ALERT_EMAIL=a@b.c") is None
    assert entry_for("make demo ITEMS=5") is None


def test_every_command_shown_is_one_the_suite_runs():
    unmatched = [shown.where() for page in PAGES for shown in shown_commands(page) if entry_for(shown.command) is None]
    assert not unmatched, (
        "commands shown in code blocks that no test runs (add them to COMMANDS with the test that runs "
        "them, or write them in prose):\n" + "\n".join(unmatched)
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_entry_names_a_test_that_exists_and_a_recipe_the_makefile_runs(command: str):
    runs = COMMANDS[command]
    path, _, function = runs.test.partition("::")
    assert (ROOT / path).is_file(), f"{command}: {path} does not exist"
    assert re.search(rf"^\s*def {re.escape(function)}\(", (ROOT / path).read_text(), re.M), (
        f"{command}: {path} defines no {function}"
    )
    if command.startswith("make "):
        target = command.split()[1]
        recipe = makefile_recipe(target)
        assert runs.recipe and runs.recipe in recipe, f"{command}: the Makefile's {target} recipe does not run {runs.recipe!r}"


def makefile_recipe(target: str, seen: frozenset[str] = frozenset()) -> str:
    """The target's recipe lines, with those of the targets it depends on or calls with $(MAKE)."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n|[a-z]+ [^\n]*\n|else\n|endif\n)*)", text, re.M)
    assert match, f"the Makefile has no target {target}"
    recipe = match.group(2)
    for other in set(match.group(1).split()) | set(re.findall(r"\$\(MAKE\).*? (\w[\w-]*)", recipe)):
        if other in seen or other == target or not re.search(rf"^{re.escape(other)}:", text, re.M):
            continue
        recipe += makefile_recipe(other, seen | {target})
    return recipe


def test_make_test_runs_every_test_under_tests():
    assert "-m pytest" in makefile_recipe("test")
    assert re.search(r'^testpaths = \["tests"\]$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert Path(__file__).parent.parent.name == "tests"


def test_every_batchdrain_command_shown_runs_as_shown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # pages show commands run from the repository's root
    shown = [
        shown
        for page in PAGES
        for shown in shown_commands(page)
        if entry_for(shown.command) in {key for key in COMMANDS if key.removesuffix(" ...") in IN_PROCESS}
    ]
    problems = []
    for example in shown:
        code, out = run_in_process(example.command, capsys)
        if code != 0:
            problems.append(f"{example.where()}: exit {code}\n{out}")
            continue
        printed = {line.rstrip() for line in out.splitlines()}
        missing = [line for line in example.output if line.strip() and CUT not in line and line.rstrip() not in printed]
        if missing:
            problems.append(f"{example.where()}: shown but not printed today:\n  " + "\n  ".join(missing))
    assert not problems, "\n".join(problems)


# -- (e) examples ------------------------------------------------------------------------------


def code_blocks(language: str) -> list[Block]:
    return [block for page in PAGES for block in blocks(page) if block.language == language]


@pytest.mark.parametrize("block", code_blocks("json"), ids=lambda block: f"{block.page.name}:{block.line}")
def test_every_json_example_parses_and_a_definition_is_valid(block: Block):
    document = json.loads("\n".join(block.lines))
    if isinstance(document, dict) and {"name", "schedule", "task"} <= set(document):
        config.parse_definition(document, "definitions[0]", set(tasks.registered_tasks()))


@pytest.mark.parametrize("block", code_blocks("python"), ids=lambda block: f"{block.page.name}:{block.line}")
def test_every_python_example_runs_as_written(block: Block, monkeypatch: pytest.MonkeyPatch):
    """Run apart from the real registry; a task it registers gets its options validator called on `{}`."""
    # The product's tasks only: an example may be a module the suite has imported already (examples/visits).
    product = {name: task for name, task in tasks._REGISTRY.items() if task.__module__.startswith("chalicelib.")}
    shipped = set(product)
    monkeypatch.setattr(tasks, "_REGISTRY", product)
    monkeypatch.setattr(tasks, "_VALIDATORS", {name: check for name, check in tasks._VALIDATORS.items() if name in product})
    monkeypatch.setattr(tasks, "_PERMANENT", {name: kinds for name, kinds in tasks._PERMANENT.items() if name in product})
    source = "\n".join(block.lines)
    exec(compile(source, f"{block.page.name}:{block.line}", "exec"), {"__name__": "docs_example"})
    for name in set(tasks._REGISTRY) - shipped:
        try:
            tasks.validate_options(name, {})
        except TaskOptionsError:
            pass  # a validator may require an option; any other error is the example's


# -- (f) names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_test_and_path_a_page_names_exists(page: Path):
    text = page.read_text()
    known = defined_tests()
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", text))
    problems = [f"{page.name}: no test named {name}" for name in sorted(named - known)]
    for token in sorted(set(re.findall(r"`([\w.-]+(?:/[\w.-]*)+)`", text))):
        if token.startswith(GENERATED) or not (ROOT / token.split("/")[0]).exists():
            continue
        if (ROOT / token).exists():
            continue
        module, _, attribute = token.rpartition(".")
        if attribute and (ROOT / f"{module}.py").is_file():
            if re.search(rf"^(?:def |class )?{re.escape(attribute)}\b", (ROOT / f"{module}.py").read_text(), re.M):
                continue
        problems.append(f"{page.name}: `{token}` does not exist")
    assert not problems, "\n".join(problems)


# -- (h) the README's own job is the one in examples/visits/ ---------------------------------


def test_the_readmes_own_job_is_the_example_in_the_repository_as_written():
    """The task and definitions the README shows are examples/visits/ byte for byte, so its commands run them."""
    shown = {block.language: "\n".join(block.lines) + "\n" for block in blocks(README) if block.language in ("python", "json")}
    assert shown["python"] == (ROOT / "examples" / "visits" / "tasks.py").read_text()
    assert shown["json"] == (ROOT / "examples" / "visits" / "definitions.json").read_text()
