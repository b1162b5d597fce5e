"""Command line of batchdrain_deploy (the Makefile's deploy, destroy, package and policy targets)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from batchdrain_deploy import DeployError
from batchdrain_deploy.checks import check_templates
from batchdrain_deploy.package import package
from batchdrain_deploy.policy import build_policy, policy_path
from batchdrain_deploy.project import PROJECT_DIR, Project


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchdrain_deploy", description=__doc__)
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="the batchdrain checkout (default: this one)")
    commands = parser.add_subparsers(dest="command", required=True)
    packaging = commands.add_parser("package", help="Route B: one template with the app and its resources")
    packaging.add_argument("--stage", required=True)
    packaging.add_argument("--out", type=Path, required=True)
    check = commands.add_parser("check", help="cfn-lint and checkov over templates (fails on any finding)")
    check.add_argument("--checkov", type=Path, required=True, help="the checkov executable (its own venv)")
    check.add_argument("templates", type=Path, nargs="+")
    policy = commands.add_parser("policy", help="write .chalice/policy-<stage>.json from batchdrain_deploy.policy")
    policy.add_argument("--stage", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    project = Project(arguments.project_dir.resolve())
    try:
        if arguments.command == "package":
            template = package(project, arguments.stage, arguments.out, Path(sys.executable).parent / "chalice")
            print(f"one template (app + resources): {template}")
        elif arguments.command == "check":
            for line in check_templates(arguments.templates, arguments.checkov):
                print(line)
        elif arguments.command == "policy":
            path = policy_path(project, arguments.stage)
            path.write_text(json.dumps(build_policy(project, arguments.stage), indent=2) + "\n")
            print(f"wrote {path}")
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
