"""Command line of batchdrain_deploy: the Makefile's deploy, destroy, package, check-templates and policy targets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from batchdrain_deploy import DeployError, route_a
from batchdrain_deploy.checks import check_templates
from batchdrain_deploy.package import package
from batchdrain_deploy.policy import build_policy, policy_path
from batchdrain_deploy.project import PROJECT_DIR, Project


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text.lower() == "true"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchdrain_deploy", description=__doc__)
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="the batchdrain checkout (default: this one)")
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser("deploy", help="Route A: resources stack, record outputs, chalice deploy, mapping settings")
    deploy.add_argument("--stage", required=True)
    deploy.add_argument("--alert-email", help="subscribe this address to the alert topic (kept on later deploys)")
    deploy.add_argument(
        "--table-deletion-protection", type=_boolean, help="true or false (default: true on create, unchanged on update)"
    )
    destroy = commands.add_parser("destroy", help="Route A: chalice delete, empty the bucket, delete the stack")
    destroy.add_argument("--stage", required=True)
    packaging = commands.add_parser("package", help="Route B: one template with the app and its resources")
    packaging.add_argument("--stage", required=True)
    packaging.add_argument("--out", type=Path, required=True)
    check = commands.add_parser("check", help="cfn-lint and checkov over templates (fails on any finding)")
    check.add_argument("--checkov", type=Path, required=True, help="the checkov executable (its own venv)")
    check.add_argument("templates", type=Path, nargs="+")
    policy = commands.add_parser("policy", help="write .chalice/policy-<stage>.json from batchdrain_deploy.policy")
    policy.add_argument("--stage", required=True)
    return parser


def _clients(service: str):
    # AWS_ENDPOINT_URL (moto in the tests) and the usual credential/region chain apply.
    return boto3.session.Session().client(service)


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    project = Project(arguments.project_dir.resolve())
    # The user's task modules (a definitions file's "modules") import from the project, as app.py does.
    sys.path.insert(0, str(project.root))
    try:
        if arguments.command == "deploy":
            route_a.deploy(
                project,
                arguments.stage,
                _clients,
                alert_email=arguments.alert_email or None,
                table_deletion_protection=arguments.table_deletion_protection,
            )
            print(f"stage {arguments.stage!r} deployed; `chalice url --stage {arguments.stage}` prints the API URL")
        elif arguments.command == "destroy":
            route_a.destroy(project, arguments.stage, _clients)
            print(f"stage {arguments.stage!r} removed")
        elif arguments.command == "package":
            template = package(project, arguments.stage, arguments.out, route_a.CHALICE)
            print(f"one template (app + resources): {template}")
        elif arguments.command == "check":
            for line in check_templates(arguments.templates, arguments.checkov):
                print(line)
        elif arguments.command == "policy":
            path = policy_path(project, arguments.stage)
            path.write_text(json.dumps(build_policy(project, arguments.stage), indent=2) + "\n")
            print(f"wrote {path}")
    except NoRegionError:
        print("error: no AWS region: set AWS_DEFAULT_REGION (or a profile with a region)", file=sys.stderr)
        return 2
    except (DeployError, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
