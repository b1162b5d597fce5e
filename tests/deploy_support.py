"""Helpers for the deploy tests: a copy of the project to deploy from, and moto taught Chalice's API document."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from batchdrain_deploy.project import PROJECT_DIR

# What `chalice deploy` and batchdrain_deploy read; a deploy writes into .chalice/.
PROJECT_FILES = ("app.py", "chalicelib", ".chalice", "infra", "requirements.txt")


def copy_project(destination: Path) -> Path:
    """A copy of the project without deployment records, so a test's deploy never touches the checkout."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("deployed", "deployments", "__pycache__"))
        else:
            shutil.copy(source, destination / name)
    return destination


def _as_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Chalice's Swagger 2.0 document in the form moto 5.2.5 imports (see `moto_accepts_swagger_2`)."""
    document = dict(document)
    document["info"] = {"description": "", **document.get("info", {})}
    if "swagger" in document:
        del document["swagger"]
        document["openapi"] = "3.0.1"
    return document


@contextmanager
def moto_accepts_swagger_2() -> Iterator[None]:
    """Let moto's (in-process) API Gateway import the Swagger 2.0 document `chalice deploy` sends.

    moto 5.2.5's ImportRestApi reads `info.description` unconditionally (KeyError -> HTTP
    500: Chalice writes no description), and its ImportRestApi/PutRestApi reject any
    document with a `swagger` key (InvalidOpenApiDocVersionException: it implements
    OpenAPI 3 only). What moto then reads — info.title, and per path and method the
    responses and x-amazon-apigateway-integration — has the same shape in Swagger 2.0
    and OpenAPI 3, so the document is handed over with a default description and the
    version key renamed. The product code and `chalice deploy` run unchanged; what this
    leaves unverified is API Gateway's own validation of Chalice's Swagger document.
    """
    from moto.apigateway.models import APIGatewayBackend

    original_import, original_put = APIGatewayBackend.import_rest_api, APIGatewayBackend.put_rest_api

    def import_rest_api(self, api_doc, fail_on_warnings):
        return original_import(self, _as_openapi(api_doc), fail_on_warnings)

    def put_rest_api(self, function_id, api_doc, fail_on_warnings, mode="merge"):
        return original_put(self, function_id, _as_openapi(api_doc), fail_on_warnings, mode)

    APIGatewayBackend.import_rest_api, APIGatewayBackend.put_rest_api = import_rest_api, put_rest_api
    try:
        yield
    finally:
        APIGatewayBackend.import_rest_api, APIGatewayBackend.put_rest_api = original_import, original_put
