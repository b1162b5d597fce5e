"""openapi.yaml is the API as the app serves it, and no request makes the API fail.

- The file documents exactly the app's routes and methods.
- Real answers (a batch running, ended with failures, redriven) have a status the file
  lists for that route and a body its schema accepts.
- Fuzzing: requests hypothesis makes up (any batch id, query, body, header) are answered
  with a documented status below 500, a 4xx carries the `Error` body without echoing
  what was sent, and a refused request writes nothing. `make test` runs FUZZ_EXAMPLES
  (default 40) per route; `make fuzz` runs thousands.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml
from chalice.test import Client
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings, strategies as st

from chalicelib.config import Definition, Settings

from .conftest import MockedAws, create_sealed_batch
from .test_api import AUTH, FAILING, SLOT, app_module, client, definition, fresh_failures, get, post, run_to_the_end  # noqa: F401

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


def resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        node: Any = SPEC
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def problems(value: Any, schema: Mapping[str, Any], where: str = "body") -> list[str]:
    """Where `value` breaks the OpenAPI schema (the subset openapi.yaml uses)."""
    schema = resolve(schema)
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null"]
    kind = schema.get("type")
    expected = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}.get(kind)
    if expected and (not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{where}: {type(value).__name__}, not {kind}"]
    found = [f"{where}: {value!r} not in {schema['enum']}"] if "enum" in schema and value not in schema["enum"] else []
    if kind == "object":
        found += [f"{where}.{name}: missing" for name in schema.get("required", ()) if name not in value]
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                found += problems(item, properties[name], f"{where}.{name}")
            elif isinstance(extra, dict):
                found += problems(item, extra, f"{where}.{name}")
    if kind == "array":
        for position, item in enumerate(value):
            found += problems(item, schema.get("items", {}), f"{where}[{position}]")
    return found


def documented(path: str, method: str) -> Mapping[str, Any]:
    return SPEC["paths"][path][method.lower()]


def assert_as_documented(route: str, method: str, status: int, body: Any) -> None:
    responses = documented(route, method)["responses"]
    assert str(status) in responses, f"{method} {route}: {status} is not documented"
    schema = resolve(responses[str(status)])["content"]["application/json"]["schema"]
    assert not problems(body, schema), problems(body, schema)


# -- the file and the app -------------------------------------------------------------------------


def test_the_file_documents_exactly_the_apps_routes_and_methods(app_module):
    served = {(path, method.lower()) for path, methods in app_module.app.routes.items() for method in methods}
    listed = {(path, method) for path, operations in SPEC["paths"].items() for method in operations}

    assert listed == served


def test_every_path_parameter_and_query_rule_in_the_file_is_the_apps():
    from chalicelib import api

    batch_id = resolve(SPEC["components"]["parameters"]["BatchId"])["schema"]["pattern"]
    assert batch_id == api.BATCH_ID.pattern
    listing = {parameter["name"]: parameter["schema"] for parameter in documented("/batches", "get")["parameters"]}
    assert listing["definition"]["pattern"] == api.DEFINITION_NAME.pattern
    assert listing["limit"]["maximum"] == api.MAX_PAGE
    assert resolve(listing["status"])["enum"] == list(api.STATUSES)
    wait = {parameter.get("name"): parameter for parameter in documented("/batches/{batch_id}/wait", "get")["parameters"]}
    assert wait["timeout"]["schema"]["maximum"] == api.MAX_WAIT_SECONDS


def test_real_answers_have_documented_statuses_and_bodies(client: Client, aws: MockedAws, definition: Definition, settings: Settings):
    header = create_sealed_batch(definition, SLOT, settings)
    batch = header["batch_id"]
    assert_as_documented("/batches/{batch_id}", "GET", *get(client, f"/batches/{batch}"))
    assert_as_documented("/batches/{batch_id}/wait", "GET", *get(client, f"/batches/{batch}/wait?timeout=0"))
    assert_as_documented("/batches/{batch_id}/redrive", "POST", *post(client, f"/batches/{batch}/redrive"))  # 409: running
    FAILING.update({3, 400})
    run_to_the_end(aws, settings)

    assert_as_documented("/batches", "GET", *get(client, "/batches"))
    assert_as_documented("/batches", "GET", *get(client, "/batches?status=NOPE"))
    assert_as_documented("/batches", "GET", *get(client, "/batches", headers={}))
    assert_as_documented("/batches/{batch_id}", "GET", *get(client, f"/batches/{batch}"))
    assert_as_documented("/batches/{batch_id}", "GET", *get(client, "/batches/nightly-1999-01-01T00:00Z"))
    assert_as_documented("/batches/{batch_id}/failures", "GET", *get(client, f"/batches/{batch}/failures?limit=1"))
    FAILING.clear()
    assert_as_documented("/batches/{batch_id}/redrive", "POST", *post(client, f"/batches/{batch}/redrive"))
    assert_as_documented("/batches/{batch_id}/wait", "GET", *get(client, f"/batches/{batch}/wait?timeout=0"))


# -- fuzzing ---------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
BATCH_ID = "nightly-2026-11-23T06:00Z"  # the batch each fuzz test creates (a valid id, so routes are reached with it)
batch_ids = st.one_of(text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,140}", fullmatch=True), st.just(BATCH_ID))
query_values = st.one_of(text, st.integers(-(10**12), 10**12).map(str), st.sampled_from(["SEALED", "COMPLETED", "", "25", "0"]))
queries = st.dictionaries(st.sampled_from(["limit", "status", "definition", "cursor", "timeout", "other"]), query_values, max_size=4)
submissions = st.fixed_dictionaries(
    {"definition": st.sampled_from(["nightly", "nosuch", ""])},
    optional={
        "items_per_message": st.one_of(st.integers(-5, 20_000), text),
        "source": st.one_of(text, st.fixed_dictionaries({"type": st.sampled_from(["random", "s3-jsonl", "nope"])}, optional={"count": st.integers(-1, 10**9), "uri": text})),
        "task_options": st.one_of(text, st.dictionaries(text, st.integers(), max_size=2)),
        "items": st.one_of(text, st.lists(st.one_of(st.integers(), text, st.dictionaries(text, st.integers(), max_size=2)), max_size=5)),
    },
).map(json.dumps)
bodies = st.one_of(st.none(), submissions, st.binary(max_size=200).map(lambda data: data.decode("latin-1")), st.recursive(
    st.none() | st.booleans() | st.integers() | text, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=10
).map(json.dumps))
ROUTES = [(path, method.upper()) for path, operations in SPEC["paths"].items() for method in operations]


INBOX_BUCKET = "batchdrain-test-inbox"


@pytest.fixture(autouse=True)
def inbox(aws: MockedAws, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inbox for inline items (set before the app is imported), so fuzzed items reach it."""
    aws.s3.create_bucket(Bucket=INBOX_BUCKET)
    monkeypatch.setenv("INBOX_URI", f"s3://{INBOX_BUCKET}/inbox/")


def table_items(aws: MockedAws) -> list[Any]:
    """The table's rows and the inbox's objects: what a refused request must leave as it was."""
    objects = [obj["Key"] for obj in aws.s3.list_objects_v2(Bucket=INBOX_BUCKET).get("Contents", [])]
    return sorted(aws.rows(), key=lambda row: json.dumps(row, sort_keys=True, default=str)) + objects


@pytest.mark.parametrize("route, method", ROUTES, ids=[f"{method} {path}" for path, method in ROUTES])
def test_made_up_requests_get_a_documented_4xx_or_answer_and_a_refused_one_writes_nothing(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings, route: str, method: str
):
    create_sealed_batch(definition, SLOT, settings)
    first = table_items(aws)

    @hypothesis_settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(batch_id=batch_ids, query=queries, body=bodies, authorized=st.booleans())
    def request(batch_id: str, query: dict[str, str], body: str | None, authorized: bool) -> None:
        if "{batch_id}" in route:
            assume(batch_id != "")  # `/batches/` is the listing's route, checked as that one
        path = route.replace("{batch_id}", urllib.parse.quote(batch_id, safe=""))
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {**(AUTH if authorized else {}), "Content-Type": "application/json"}
        before = table_items(aws)
        if method == "GET":
            response = client.http.get(path, headers=headers)
        else:
            response = client.http.post(path, headers=headers, body=body or "")
        assert response.status_code < 500, (path, response.body[:500])
        answer = json.loads(response.body)
        if response.status_code == 404 and "error" not in answer:
            return  # no route matched at all (an id with '/'): Chalice's own 404, before the app
        assert_as_documented(route, method, response.status_code, answer)
        if route.endswith("/cancel") and response.status_code == 202:
            assert authorized and batch_id == BATCH_ID, "only the test's own batch, asked for by name, is ever cancelled"
        if response.status_code >= 400:
            shown = json.dumps(answer, ensure_ascii=False)
            for sent in (batch_id, *query.values()):
                if len(sent) >= 12:  # shorter ones may be words of a fixed message
                    assert sent not in shown, "what was sent is never echoed"
            assert table_items(aws) == before, "a refused request writes nothing"

    request()
    if method == "GET":
        assert table_items(aws) == first, "reading writes nothing"
