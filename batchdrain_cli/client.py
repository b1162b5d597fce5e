"""A small client of batchdrain's HTTP API (standard library only; botocore signs for a deployed API).

Where it talks to, first found wins:

1. `--url URL` (with `--token TOKEN`, or BATCHDRAIN_API_TOKEN, for a local API);
2. `--port PORT`: the local stack running on that port (`make local PORT=...`);
3. BATCHDRAIN_API_URL (with BATCHDRAIN_API_TOKEN for a local API);
4. the one local stack running here (its state file, batchdrain_local.control).

How it signs: with a token, `Authorization: Bearer <token>` (the local stage); without
one, SigV4 for service `execute-api` (a deployed stage: API Gateway checks IAM), with
the credentials boto3 finds and the region of the URL
(`https://<id>.execute-api.<region>.amazonaws.com/<stage>`), else AWS_REGION or
AWS_DEFAULT_REGION.

Every command that talks to the API takes the same options (`add_api_options`) and runs
through `run_api`: a refusal is one line, `error: <field>: <message>`, and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterator, Mapping

SERVICE = "execute-api"
EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com$")
REQUEST_SECONDS = 60.0  # more than the API's longest answer (a 25 s wait, a 20 s redrive)


class ApiError(Exception):
    """The API refused a request, or could not be reached: one line for the user."""


class Api:
    """One API: `get`/`post` a path, the JSON answer back; ApiError for anything else."""

    def __init__(self, url: str, token: str | None = None, credentials: Any = None, region: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._credentials = credentials
        self._region = region

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.request("GET", path, query)

    def post(self, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.request("POST", path, body=body, headers=headers)

    def pages(self, path: str, key: str, query: Mapping[str, Any] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Each page of a paged list (`key` holds the page; `cursor` the next one's), to the last."""
        query = dict(query or {})
        while True:
            page = self.get(path, query)
            yield page[key]
            if not page.get("cursor"):
                return
            query["cursor"] = page["cursor"]

    def request(
        self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        extra = dict(headers or {})
        given = {name: value for name, value in (query or {}).items() if value is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(given)}" if given else "")
        data = b"" if body is None and method == "GET" else json.dumps(body if body is not None else {}).encode()
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}), **extra}
        headers.update(self._auth_headers(method, url, data, headers))
        call = urllib.request.Request(url, data=data or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(call, timeout=REQUEST_SECONDS) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ApiError(refusal(error.code, error.read())) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(f"cannot reach the API at {self.url} ({reason})") from None
        except ValueError:
            raise ApiError(f"the API at {self.url} did not answer JSON (is that the API's URL?)") from None

    def _auth_headers(self, method: str, url: str, data: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return sign(method, url, data, headers, self._credentials or aws_credentials(), self._region or region_of(self.url))


def refusal(status: int, body: bytes) -> str:
    """One line for an HTTP error: the field and the message the API named, else what it said."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return f"{answer['error'].get('field', '?')}: {answer['error'].get('message', '')} (HTTP {status})"
    if isinstance(answer, dict) and answer.get("message", answer.get("Message")):
        return f"HTTP {status}: {answer.get('message', answer.get('Message'))}"  # API Gateway's own refusals
    return f"HTTP {status}"


# -- SigV4, for a deployed API --------------------------------------------------------------


def region_of(url: str) -> str:
    """The region in an execute-api URL, else AWS_REGION / AWS_DEFAULT_REGION; ApiError if none."""
    match = EXECUTE_API_HOST.match(urllib.parse.urlsplit(url).hostname or "")
    region = match.group(1) if match else os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ApiError(f"no AWS region for {url}: use an execute-api URL or set AWS_REGION")
    return region


def aws_credentials() -> Any:
    import boto3

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise ApiError("no AWS credentials to sign the request with (a local API needs --token or BATCHDRAIN_API_TOKEN instead)")
    return credentials


def sign(method: str, url: str, data: bytes, headers: Mapping[str, str], credentials: Any, region: str) -> dict[str, str]:
    """The headers SigV4 adds to this exact request (Authorization, X-Amz-Date, X-Amz-Security-Token)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=data, headers=dict(headers))
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return {name: value for name, value in request.headers.items() if name.lower() not in {name.lower() for name in headers}}


# -- where to talk to -------------------------------------------------------------------------


def connect(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Api:
    """The API the command line names (see the module docstring)."""
    token = args.token or environ.get("BATCHDRAIN_API_TOKEN") or None
    if args.url:
        return Api(args.url, token)
    if args.port is None and environ.get("BATCHDRAIN_API_URL"):
        return Api(environ["BATCHDRAIN_API_URL"], token)
    from batchdrain_local import control

    try:
        stack = control.find_stack(args.port)
    except control.StackNotRunningError as error:
        raise ApiError(f"{error}, or name an API with --url or BATCHDRAIN_API_URL") from None
    return Api(stack["api_url"], args.token or stack.get("api_token"))


def add_api_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every API command takes: where to talk, and --json."""
    where = parser.add_argument_group("which API (default: BATCHDRAIN_API_URL, else the running local stack)")
    where.add_argument("--url", help="the API's URL, e.g. https://ID.execute-api.REGION.amazonaws.com/api (signed with SigV4)")
    where.add_argument("--token", help="the local API's token (default: BATCHDRAIN_API_TOKEN, else the local stack's)")
    where.add_argument("--port", type=int, help="the local stack on this port (make local PORT=)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON (one document), for scripts")
    return parser


def run_api(args: argparse.Namespace, work: Callable[[Api], int]) -> int:
    """Run a command's work on the API the options name; an ApiError is one line on stderr and exit 1."""
    try:
        return work(connect(args))
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True), flush=True)


def quoted(batch_id: str) -> str:
    """A batch id as a path segment: its `:` as it is (a path may hold one); odd ids the API refuses itself, naming the rule."""
    return urllib.parse.quote(batch_id, safe=":")
