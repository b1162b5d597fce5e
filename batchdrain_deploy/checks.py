"""cfn-lint and checkov over the templates (`make check-templates`, and the packaging test).

checkov runs from its own virtualenv (.venv/checkov, requirements-checkov.txt): it pins
boto3==1.35.49, networkx<2.7 and packaging<24, which conflict with this project's
boto3, cfn-lint and pytest pins. Its JSON report is read rather than its exit code alone,
because checkov exits 0 on a template it could not parse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from batchdrain_deploy import DeployError

CFN_LINT = Path(sys.executable).parent / "cfn-lint"


@dataclass(frozen=True)
class CheckovSummary:
    """What checkov found in one template."""

    passed: int
    failed: list[str]
    skipped: list[str]


def run_cfn_lint(template: Path, cfn_lint: Path = CFN_LINT) -> None:
    """cfn-lint with its defaults (errors, warnings and informational findings all fail)."""
    result = subprocess.run([str(cfn_lint), str(template)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployError(f"cfn-lint {template} (exit {result.returncode}):\n{result.stdout}{result.stderr}")


def run_checkov(template: Path, checkov: Path) -> CheckovSummary:
    """checkov's CloudFormation checks, offline (--skip-download); an error on any failed check."""
    result = subprocess.run(
        [str(checkov), "-f", str(template), "--framework", "cloudformation", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise DeployError(f"checkov {template} gave no report (exit {result.returncode}):\n{result.stderr}") from None
    if isinstance(report, list):  # one report per framework; we ask for one
        (report,) = report
    summary, results = report.get("summary", {}), report.get("results", {})
    if summary.get("parsing_errors") or not summary.get("passed"):
        raise DeployError(f"checkov could not read {template}: {summary}")
    found = CheckovSummary(
        passed=summary["passed"],
        failed=[f"{check['check_id']} {check['resource']}" for check in results.get("failed_checks", [])],
        skipped=[f"{check['check_id']} {check['resource']}" for check in results.get("skipped_checks", [])],
    )
    if found.failed:
        raise DeployError(f"checkov {template}: failed " + ", ".join(found.failed))
    return found


def check_templates(templates: list[Path], checkov: Path) -> list[str]:
    """Both tools over each template; one summary line per template."""
    lines = []
    for template in templates:
        run_cfn_lint(template)
        summary = run_checkov(template, checkov)
        skipped = sorted({entry.split()[0] for entry in summary.skipped})
        lines.append(
            f"{template}: cfn-lint clean; checkov {summary.passed} passed, 0 failed, "
            f"{len(summary.skipped)} skipped ({', '.join(skipped) or 'none'})"
        )
    return lines
