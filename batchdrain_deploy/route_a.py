"""Route A: `make deploy` and `make destroy`, step by step.

deploy:  0. the app is imported with the stage's settings and every name Chalice would give
            it is checked against AWS's 64-character limits (batchdrain_deploy.names); the
            stage's policy file must be the one `make policy` generates (batchdrain_deploy.policy);
         1. the resources stack (infra/resources.yaml) is created or updated;
         2. its outputs are recorded into the stage's environment in .chalice/config.json
            (the way Chalice's media-query sample does with recordresources.py);
         3. `chalice deploy --stage <stage>` creates the functions, schedules, mappings, API;
         4. the mapping settings Chalice cannot express are applied (batchdrain_deploy.mappings).
destroy: `chalice delete`, then the bucket is emptied and the stack deleted. It refuses,
         before deleting anything, while the table has deletion protection.

Every step is idempotent, so a deploy that failed half way is finished by running it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from batchdrain_deploy import DeployError
from batchdrain_deploy.mappings import apply_updates, plan_updates
from batchdrain_deploy.names import check_names
from batchdrain_deploy.package import definitions_environment, load_app
from batchdrain_deploy.policy import check_policy, definitions_path
from batchdrain_deploy.project import EVENT_SOURCES_TEMPLATE, OUTPUT_ENVIRONMENT, Project
from batchdrain_deploy.usercode import stage_user_code
from batchdrain_deploy.stack import (
    StackParameters,
    delete_stack,
    deploy_stack,
    describe_stack,
    empty_bucket,
    environment_from_outputs,
    stack_name,
    stack_outputs,
)

Clients = Callable[[str], Any]
CHALICE = Path(sys.executable).parent / "chalice"


def run_chalice(project: Project, *arguments: str, environment: Mapping[str, str] | None = None) -> None:
    """Run the chalice CLI in the project (output shown as it comes), with `environment` added; an error if it fails."""
    result = subprocess.run([str(CHALICE), *arguments], cwd=project.root, env={**os.environ, **(environment or {})})
    if result.returncode != 0:
        raise DeployError(f"`chalice {' '.join(arguments)}` failed (exit {result.returncode}); see its output above")


# Outputs the app checks the shape of at import stand in with a value of that shape.
SHAPED_STAND_INS = {"INBOX_URI": "s3://not-deployed-yet/inbox/"}


def deploy(
    project: Project,
    stage: str,
    clients: Clients,
    *,
    alert_email: str | None = None,
    table_deletion_protection: bool | None = None,
    chalice: Callable[..., None] = run_chalice,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Deploy the stage (steps in the module docstring); returns the recorded environment."""
    # Before anything exists: the app imports with this stage's settings (definitions, budget)
    # and every name Chalice will give it fits AWS's limits. Outputs not recorded yet are
    # stood in for; only their presence matters at import.
    stand_ins = {variable: SHAPED_STAND_INS.get(variable, f"not-deployed-yet:{variable}") for variable in OUTPUT_ENVIRONMENT.values()}
    check_names(project, stage, load_app(project, stage, defaults=stand_ins))
    check_policy(project, stage)
    staged = stage_user_code(project, stage, definitions_path(project, stage))
    name = stack_name(project.app_name(), stage)
    parameters = StackParameters(
        stage,
        project.visibility_timeout(stage),
        project.planning_visibility_timeout(stage),
        alert_email,
        table_deletion_protection,
    )
    log(
        f"1/4 resources stack {name} (visibility timeout {parameters.visibility_timeout} s, "
        f"planning queue {parameters.planning_visibility_timeout} s)"
    )
    outputs = deploy_stack(clients("cloudformation"), name, project.resources_template_body(), parameters)
    environment = environment_from_outputs(outputs, name)

    changed = project.record_environment(stage, environment)
    log(f"2/4 recorded {', '.join(sorted(changed)) or 'nothing new'} into .chalice/config.json stage {stage!r}")

    log(f"3/4 chalice deploy --stage {stage} (with vendor/: {', '.join(staged)})")
    chalice(project, "deploy", "--stage", stage, environment=definitions_environment(project, stage))

    updates = plan_updates(
        project.deployed_resources(stage), project.root / EVENT_SOURCES_TEMPLATE, project.resources_template(), outputs
    )
    apply_updates(clients("lambda"), updates)
    applied = "; ".join(f"{update.function_name}: {', '.join(sorted(update.settings))}" for update in updates)
    log(f"4/4 event source settings applied: {applied or 'none'}")
    return environment


def destroy(
    project: Project,
    stage: str,
    clients: Clients,
    *,
    chalice: Callable[..., None] = run_chalice,
    log: Callable[[str], None] = print,
) -> None:
    """Remove the app and the resources stack of a stage; refuse while the table is protected."""
    project.stage(stage)  # an unknown stage is an error, not "nothing to remove"
    name = stack_name(project.app_name(), stage)
    cloudformation = clients("cloudformation")
    outputs = stack_outputs(cloudformation, name) if describe_stack(cloudformation, name) else {}
    if "TableName" in outputs:
        table = clients("dynamodb").describe_table(TableName=outputs["TableName"])["Table"]
        if table.get("DeletionProtectionEnabled"):
            raise DeployError(
                f"table {outputs['TableName']} has deletion protection; nothing was deleted. Turn it off first: "
                f"make deploy STAGE={stage} TABLE_DELETION_PROTECTION=false"
            )
    if (project.root / ".chalice" / "deployed" / f"{stage}.json").exists():
        log(f"1/3 chalice delete --stage {stage}")
        chalice(project, "delete", "--stage", stage)
    else:
        log(f"1/3 no Chalice deployment recorded for stage {stage!r}")
    if "ResultsBucketName" in outputs:
        removed = empty_bucket(clients("s3"), outputs["ResultsBucketName"])
        log(f"2/3 emptied bucket {outputs['ResultsBucketName']} ({removed} object versions)")
    log(f"3/3 deleting stack {name}")
    delete_stack(cloudformation, name)
