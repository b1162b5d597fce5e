"""A user's own task modules and definitions file, deployed as written (both deploy routes package the same way).

A copy of the project gets what a user adds: a `tasks/` package of their own (outside
chalicelib/, the product) and a definitions file of their own, named with DEFINITIONS=
(BATCHDRAIN_DEFINITIONS). `make package`'s command packages it; the test then unzips
the deployment package and imports its app.py in a fresh interpreter whose only code is
the zip, with the stage's environment and no BATCHDRAIN_DEFINITIONS: every handler and
every task of the user's file must be there. Without the vendor/ staging, the package
holds only the shipped examples and the template names a handler the zip does not have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from batchdrain_deploy.project import Project
from tests.deploy_support import copy_project

TASK_MODULE = '''
from chalicelib.tasks import task


@task("upper-people")
def upper(item, options):
    return {"name": str(item["id"]).upper()}
'''

DEFINITIONS = {
    "modules": ["tasks.people"],
    "definitions": [
        {
            "name": "upper-people",
            "schedule": "cron(0 6 * * ? *)",
            "source": {"type": "random", "count": 100, "max_value": 10},
            "task": "upper-people",
            "items_per_message": 10,
            "item_seconds": 0.1,
        }
    ],
}


def user_project(root: Path) -> tuple[Path, Path]:
    """A copy of the project with the user's tasks/ package, and their definitions file beside it."""
    project = copy_project(root / "project")
    (project / "tasks").mkdir()
    (project / "tasks" / "__init__.py").write_text("")
    (project / "tasks" / "people.py").write_text(TASK_MODULE)
    definitions = root / "my-definitions.json"
    definitions.write_text(json.dumps(DEFINITIONS, indent=2))
    return project, definitions


def package(project: Path, definitions: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchdrain_deploy", "--project-dir", str(project), "package", "--stage", "dev", "--out", str(out)],
        env={**os.environ, "BATCHDRAIN_DEFINITIONS": str(definitions)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("user")
    project, definitions = user_project(root)
    result = package(project, definitions, root / "out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, json.loads((root / "out" / "sam.json").read_text())


def test_the_deployment_package_holds_the_users_definitions_and_tasks_and_its_app_imports_them(packaged):
    root, template = packaged
    assert "BatchUpperPeople" in template["Resources"]
    unzipped = root / "unzipped"
    with zipfile.ZipFile(root / "out" / "deployment.zip") as archive:
        archive.extractall(unzipped)
    assert (unzipped / "batchdrain_definitions.json").exists() and (unzipped / "tasks" / "people.py").exists()
    environment = {
        key: value for key, value in os.environ.items() if key not in ("BATCHDRAIN_DEFINITIONS", "PYTHONPATH")
    }
    environment.update(Project(root / "project").stage_environment("dev"))
    # As on Lambda: the zip first, then only what the runtime provides (the standard library, boto3);
    # -S skips site-packages' .pth files, so this checkout's own packages cannot be found.
    runtime = [path for path in sys.path if path.endswith("site-packages")]
    probe = (
        f"import sys, json; sys.path[:0] = ['.', *{runtime!r}];"
        "import app, chalicelib; from chalicelib.tasks import get_task;"
        "print(json.dumps({'handler': hasattr(app, 'batch_upper_people'), 'definitions': sorted(app.DEFINITIONS),"
        " 'task': get_task('upper-people')({'id': 'ada'}, {}), 'code_from': [app.__file__, chalicelib.__file__]}))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=unzipped, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {
        "handler": True,
        "definitions": ["upper-people"],
        "task": {"name": "ADA"},
        "code_from": [str(unzipped / "app.py"), str(unzipped / "chalicelib" / "__init__.py")],
    }


def test_a_stage_that_sets_its_own_definitions_file_is_refused_with_the_reason(tmp_path: Path):
    project, definitions = user_project(tmp_path)
    config_path = project / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    config["stages"]["dev"]["environment_variables"]["BATCHDRAIN_DEFINITIONS"] = "other.json"
    config_path.write_text(json.dumps(config))

    result = package(project, definitions, tmp_path / "out")

    assert result.returncode == 1
    assert "stage 'dev' sets BATCHDRAIN_DEFINITIONS in .chalice/config.json" in result.stderr
    assert not (tmp_path / "out" / "sam.json").exists()


def test_a_task_module_from_outside_the_project_is_refused_with_the_reason(tmp_path: Path):
    project, definitions = user_project(tmp_path)
    document = json.loads(definitions.read_text())
    document["modules"].append("json")  # importable, but not the project's own: Lambda would not have it
    definitions.write_text(json.dumps(document))

    result = package(project, definitions, tmp_path / "out")

    assert result.returncode == 1
    assert "modules[1] 'json': 'json' is not the project's own" in result.stderr
    assert not (tmp_path / "out" / "sam.json").exists()


def test_a_definitions_file_with_problems_stops_the_package_with_one_line_each_and_no_traceback(tmp_path: Path):
    project, definitions = user_project(tmp_path)
    document = json.loads(definitions.read_text())
    document["definitions"][0]["items_per_message"] = 0
    document["modules"].append("tasks.nosuch")
    definitions.write_text(json.dumps(document, indent=2))

    result = package(project, definitions, tmp_path / "out")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {definitions}:4: modules[1]: cannot import 'tasks.nosuch': ModuleNotFoundError: No module named 'tasks.nosuch'",
        f"{definitions}:16: definitions[0].items_per_message: must be between 1 and 10,000, got 0",
    ], result.stderr
