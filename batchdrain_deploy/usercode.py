"""The user's own definitions and task modules, put where both deploy routes package them.

Chalice packages app.py, chalicelib/ (the product) and the contents of vendor/ (at the
root of the package). So before `chalice deploy` or `chalice package`, the definitions
file the deploy was given (DEFINITIONS=..., or the project's batchdrain_definitions.json)
is copied to vendor/batchdrain_definitions.json, where the deployed app looks for it
(chalicelib.config.definitions_file), and each module its `"modules"` list names is
copied to vendor/ under its own name, so `import tasks.people` works on Lambda as it does
here. Only the project's own modules can be packaged this way: one found anywhere else
(site-packages) is refused with the reason, as is a stage that sets BATCHDRAIN_DEFINITIONS
itself (it would send the deployed app to another file than the one checked here).

vendor/ is generated (git ignores it): `vendor/.batchdrain-staged` lists what was put
there, and only that is replaced the next time; anything else in vendor/ is the user's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

from batchdrain_deploy import DeployError
from batchdrain_deploy.project import Project
from chalicelib.config import USER_DEFINITIONS_FILE

VENDOR = "vendor"
STAGED_LIST = ".batchdrain-staged"


def stage_user_code(project: Project, stage: str, definitions: Path) -> list[str]:
    """Copy `definitions` and the modules it lists into the project's vendor/; the names written there."""
    if project.stage_environment(stage).get("BATCHDRAIN_DEFINITIONS"):
        raise DeployError(
            f"stage {stage!r} sets BATCHDRAIN_DEFINITIONS in .chalice/config.json: remove it and name the file when "
            "you deploy (DEFINITIONS=path); the deployed app reads the file packaged as "
            f"{USER_DEFINITIONS_FILE}, the one checked here"
        )
    document = json.loads(definitions.read_text(encoding="utf-8"))  # valid: the app was loaded from it
    sources = {USER_DEFINITIONS_FILE: definitions}
    for position, name in enumerate(document.get("modules", [])):
        top = name.split(".")[0]
        if top == "chalicelib":
            continue  # the product's own: packaged already
        sources[top] = _module_source(project, top, f"modules[{position}] {name!r}")
    vendor = project.root / VENDOR
    _clear(vendor)
    vendor.mkdir(exist_ok=True)
    for name, source in sources.items():
        target = vendor / (name if source.is_dir() or name == USER_DEFINITIONS_FILE else source.name)
        # A name batchdrain did not write (the user's own vendored package) is never replaced.
        if target.exists():
            raise DeployError(f"{target} exists and is not batchdrain's to replace: move it out of vendor/")
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, target)
    written = sorted(path.name for path in vendor.iterdir() if path.name != STAGED_LIST and path.name in _names(sources))
    (vendor / STAGED_LIST).write_text("\n".join(written) + "\n")
    return written


def _names(sources: dict[str, Path]) -> set[str]:
    """What each source is called in vendor/: a package by its directory, a module by its file, the definitions by their fixed name."""
    return {name if source.is_dir() or name == USER_DEFINITIONS_FILE else source.name for name, source in sources.items()}


def _module_source(project: Project, top: str, where: str) -> Path:
    """The package directory (or module file) of a top-level module, which must be the project's own."""
    sys.path.insert(0, str(project.root))
    try:
        spec = importlib.util.find_spec(top)
    finally:
        sys.path.remove(str(project.root))
    if spec is None or spec.origin is None:
        raise DeployError(f"{where}: no module {top!r} in the project")
    origin = Path(spec.origin).resolve()
    source = origin.parent if origin.name == "__init__.py" else origin
    if not source.is_relative_to(project.root.resolve()) or source.is_relative_to((project.root / VENDOR).resolve()):
        raise DeployError(
            f"{where}: {top!r} is not the project's own (found at {source}); put it in the project next to app.py, "
            "or install it with requirements.txt and leave it out of modules"
        )
    return source


def _clear(vendor: Path) -> None:
    """Remove what the last staging wrote (and only that)."""
    listed = vendor / STAGED_LIST
    if not listed.exists():
        return
    for name in listed.read_text().split():
        path = vendor / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    listed.unlink()
