"""Deploying batchdrain to AWS: both routes, run from the Makefile. Not deployed itself.

Route A (`make deploy` / `make destroy`): the resources stack (infra/resources.yaml),
its outputs recorded into the stage's environment in .chalice/config.json,
`chalice deploy`, then the event-source settings Chalice cannot express applied with
UpdateEventSourceMapping (from infra/event-sources.json).

Route B (`make package`): one CloudFormation/SAM template holding the app and the
resources, built by `chalice package --merge-template` with a merge template generated
from infra/resources.yaml and infra/event-sources.json.

    python -m batchdrain_deploy deploy  --stage dev [--alert-email a@b.c] [--table-deletion-protection false]
    python -m batchdrain_deploy destroy --stage dev
    python -m batchdrain_deploy package --stage dev --out out/dev
    python -m batchdrain_deploy lint    --template out/dev/sam.json --checkov .venv/checkov/bin/checkov
    python -m batchdrain_deploy policy  --stage dev
"""


class DeployError(Exception):
    """A deployment step cannot go on; the message names what is wrong and what to do."""
