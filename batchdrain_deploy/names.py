"""AWS's name limits for a stage, checked before anything is deployed.

`chalice deploy --stage <stage>` names each function `<app>-<stage>-<handler>`, its IAM
role the same, and each schedule's EventBridge rule `<app>-<stage>-<handler>-event`
(chalice/deploy/appgraph.py). Lambda, IAM and EventBridge take at most 64 characters,
and a name over it fails the deploy half way, after the resources stack and some
functions exist. The names here come from Chalice's own application graph, so they
are exactly the ones `chalice deploy` would create. (`chalice package` gives none of
these names: CloudFormation generates them, within the limits.)
"""

from __future__ import annotations

from chalice import Chalice
from chalice.config import Config
from chalice.deploy import models
from chalice.deploy.appgraph import ApplicationGraphBuilder, DependencyBuilder

from batchdrain_deploy import DeployError
from batchdrain_deploy.project import Project
from chalicelib.config import MAX_STAGE_NAME_LENGTH

# What Chalice names, and the most characters AWS takes for it.
NAME_LIMITS = {
    (models.LambdaFunction, "function_name"): ("function", 64),
    (models.ManagedIAMRole, "role_name"): ("role", 64),
    (models.ScheduledEvent, "rule_name"): ("schedule rule", 64),
    (models.CloudWatchEvent, "rule_name"): ("event rule", 64),
}


def deployed_names(project: Project, stage: str, app: Chalice) -> list[tuple[str, str]]:
    """(kind, name) of every function, role and rule `chalice deploy --stage <stage>` would create."""
    config = Config.create(
        chalice_stage=stage,
        app_name=project.app_name(),
        project_dir=str(project.root),
        config_from_disk=project.config(),
        chalice_app=app,
    )
    application = ApplicationGraphBuilder().build(config, stage)
    names = []
    for resource in DependencyBuilder().build_dependencies(application):
        for (kind, attribute), (label, _) in NAME_LIMITS.items():
            if isinstance(resource, kind):
                names.append((label, getattr(resource, attribute)))
    return list(dict.fromkeys(names))


def check_names(project: Project, stage: str, app: Chalice) -> None:
    """A DeployError listing every name of the stage over AWS's limit; nothing when all fit."""
    limits = {label: limit for label, limit in NAME_LIMITS.values()}
    too_long = [(label, name) for label, name in deployed_names(project, stage, app) if len(name) > limits[label]]
    if too_long:
        listed = "\n  ".join(f"{label} {name} ({len(name)} characters)" for label, name in too_long)
        raise DeployError(
            f"stage {stage!r}: AWS allows at most {max(limits.values())} characters for these names, "
            f"and nothing was deployed. Use a stage name of at most {MAX_STAGE_NAME_LENGTH} characters (it fits "
            f"every definition name the definitions file allows), or shorter definition names:\n  {listed}"
        )
