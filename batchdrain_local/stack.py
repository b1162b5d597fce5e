"""LocalStack: moto server + resources + the app's handlers wired the way AWS wires them.

    with LocalStack(StackOptions(definitions_file=path)) as stack:
        stack.fire_schedule("nightly")
        alert = stack.wait_for_alert(batch_id, timeout=120)

The handlers and their settings come from the app's own Chalice registrations
(`app.event_sources`), so the stack runs exactly what `chalice deploy` would wire up,
plus the mapping settings Chalice cannot express, read from the same merge template
`chalice package` uses (infra/event-sources.json; see batchdrain_local.eventsources).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from chalice.app import DynamoDBEventConfig, ScheduledEventConfig, SQSEventConfig

from batchdrain_local import events, lifeline
from batchdrain_local.clock import AcceleratedClock
from batchdrain_local.eventsources import DYNAMODB, EVENT_SOURCES_FILE, SQS, MappingSettings, load_mapping_settings
from batchdrain_local.faults import FaultInjector
from batchdrain_local.metrics import RequestCounter
from batchdrain_local.pollers import AlertInbox, SqsPoller, StreamPoller
from batchdrain_local.resources import Resources, create_resources
from batchdrain_local.runtime import InvocationCrashed, Invoker
from batchdrain_local.server import ACCOUNT_ID, CLIENT_ENVIRONMENT, MotoServer
from chalicelib.config import SETTING_NAMES
from chalicelib.log import LOGGER_NAME

PROJECT_DIR = Path(__file__).resolve().parent.parent
REGION = CLIENT_ENVIRONMENT["AWS_DEFAULT_REGION"]


def _first(*values: Any) -> Any:
    """The first value that is not None (a merged property, else the decorator's setting)."""
    return next(value for value in values if value is not None)


def stage_environment(stage: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The environment variables `.chalice/config.json` gives `stage` (top level, then stage)."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    if stage not in config.get("stages", {}):
        raise ValueError(f".chalice/config.json has no stage {stage!r}")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


IGNORED_SETTINGS = "ignored from your shell: {} (settings come from the stage in .chalice/config.json, as when deployed)"


def shell_settings(environ: Mapping[str, str]) -> list[str]:
    """The batchdrain settings the shell sets, which the stack ignores (and says so).

    One precedence everywhere: the stage's environment in .chalice/config.json (top
    level, then stage), then the defaults in chalicelib.config. A deployed function never
    sees the deployer's shell, so the local stack does not read it either: what runs here
    is what deploys. (BATCHDRAIN_DEFINITIONS names a file, not a setting: it is read.)
    """
    return sorted(name for name in SETTING_NAMES if environ.get(name))


@dataclass
class StackOptions:
    """How the local stack runs. Defaults suit the demo; tests shorten the timeouts."""

    stage: str = "local"
    definitions_file: Path | None = None
    processor_concurrency: int = 4  # capped locally: the stage's MaximumConcurrency is for AWS
    visibility_timeout: int = 30
    max_receive_count: int = 5
    lambda_timeout: float = 120.0  # the local stage's lambda_timeout (.chalice/config.json)
    extra_environment: dict[str, str] = field(default_factory=dict)
    app_log_level: str = "WARNING"
    # Seeded fault injection (batchdrain_local.faults): the pollers and the app's own code ask it.
    faults: FaultInjector | None = None
    # The sweeper's schedule runs this many times faster than deployed (1: its real rate; None: off).
    sweep_speed: float | None = None
    # Functions whose event source is not started (e.g. {"process_work"}): tests hold the pipeline there
    # (LocalStack.resume starts it later).
    paused: frozenset[str] = frozenset()
    # The merge template the mapping settings come from, and per-function overrides of its
    # properties, e.g. {"finalize": {"MaximumRetryAttempts": 1}}; a value of None removes
    # the property, e.g. {"process_work": {"FunctionResponseTypes": None}}.
    event_sources_file: Path = EVENT_SOURCES_FILE
    event_source_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


class LocalStack:
    """The whole product on one machine: see the module docstring."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.server = MotoServer()
        self.invoker = Invoker(self.options.lambda_timeout)
        self.requests = RequestCounter()
        self.alerts: list[dict[str, Any]] = []
        self.on_alert: Callable[[dict[str, Any]], None] | None = None
        self._alerts_changed = threading.Condition()
        self._saved_environment: dict[str, str] | None = None
        self._workers: list[Any] = []
        # Every event source poller by function name, started or paused.
        self.pollers: dict[str, SqsPoller | StreamPoller] = {}
        self._poller_counts: dict[str, int] = {}
        self.app_module: ModuleType | None = None
        self.resources: Resources | None = None
        self.endpoint_url = ""
        # The local stage's API token (API_AUTH=token): `Authorization: Bearer <api_token>`, new each start.
        self.api_token = ""

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> "LocalStack":
        self.endpoint_url = self.server.start()
        try:
            self._start_with_server()
        except BaseException:
            self.stop()  # nothing half started: fault patches, threads, environment, server
            raise
        return self

    def _start_with_server(self) -> None:
        self._saved_environment = dict(os.environ)
        for name in SETTING_NAMES:  # the stage's settings and the defaults only, as deployed
            os.environ.pop(name, None)
        stage_env = stage_environment(self.options.stage)
        os.environ.update(CLIENT_ENVIRONMENT)
        os.environ.update(stage_env)
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
        self.resources = create_resources(
            self.client,
            stage_env["TABLE_NAME"],
            stage_env["WORK_QUEUE_NAME"],
            dead_letter_queue_name=stage_env["DEAD_LETTER_QUEUE_NAME"],
            planning_queue_name=stage_env["PLANNING_QUEUE_NAME"],
            visibility_timeout=self.options.visibility_timeout,
            max_receive_count=self.options.max_receive_count,
        )
        # The inbox for inline items (INBOX_URI), a bucket of the stack's own, as deployed stages use theirs.
        inbox_bucket = f"{stage_env['TABLE_NAME']}-inbox".lower()
        try:
            self.client("s3").create_bucket(Bucket=inbox_bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        os.environ.update(
            {
                "INBOX_URI": f"s3://{inbox_bucket}/inbox/",
                "TABLE_STREAM_ARN": self.resources.table_stream_arn,
                "ALERT_TOPIC_ARN": self.resources.alert_topic_arn,
                "API_TOKEN": secrets.token_urlsafe(24),
                **self.options.extra_environment,
            }
        )
        self.api_token = os.environ["API_TOKEN"]
        if self.options.definitions_file:
            os.environ["BATCHDRAIN_DEFINITIONS"] = str(self.options.definitions_file)
        self.app_module = self._load_app()
        if self.options.faults is not None:
            self.options.faults.install()
        self._start_event_sources()
        if self.options.sweep_speed:
            self._start_sweeper(self.options.sweep_speed)

    def stop(self) -> None:
        for worker in self._workers:
            worker.stopping.set()
        for worker in self._workers:
            worker.stop()
        self._workers = []
        self.pollers = {}
        if self.options.faults is not None:
            self.options.faults.uninstall()
        self.server.stop()
        if self._saved_environment is not None:
            os.environ.clear()
            os.environ.update(self._saved_environment)
            self._saved_environment = None
        from chalicelib import aws

        aws.reset_clients()

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this stack as the app does (e.g. `chalice local`)."""
        names = set(CLIENT_ENVIRONMENT) | {
            "AWS_ENDPOINT_URL", "TABLE_STREAM_ARN", "ALERT_TOPIC_ARN", "INBOX_URI", "BATCHDRAIN_DEFINITIONS", "API_TOKEN"
        }
        return {name: os.environ[name] for name in names if name in os.environ}

    def client(self, service: str) -> Any:
        """A client of the stack's own (not the app's, so its requests are not counted as the app's)."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard"}),
        )

    # -- wiring ----------------------------------------------------------------

    def _load_app(self) -> ModuleType:
        """Import app.py afresh, so it reads this stack's environment (names, definitions)."""
        from chalicelib import aws

        aws.reset_clients()
        self.requests.attach(aws.session())
        if str(PROJECT_DIR) not in sys.path:
            sys.path.insert(0, str(PROJECT_DIR))
        import logging

        logging.getLogger(LOGGER_NAME).setLevel(self.options.app_log_level)
        spec = importlib.util.spec_from_file_location(f"batchdrain_app_{id(self)}", PROJECT_DIR / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def handler(self, handler_string: str) -> Callable[[dict, Any], Any]:
        assert self.app_module is not None
        return getattr(self.app_module, handler_string.rsplit(".", 1)[1])

    def invoke(self, function_name: str, event: dict[str, Any]) -> Any:
        """Invoke one of the app's functions by its Chalice name, with an event built by the caller."""
        assert self.app_module is not None
        sources = {source.name: source for source in self.app_module.app.event_sources}
        return self.invoker(function_name, self.handler(sources[function_name].handler_string), event)

    def mapping_settings(self, function_name: str, kind: str) -> MappingSettings:
        """The deployed mapping's settings for `function_name`, with this stack's overrides."""
        return load_mapping_settings(
            function_name, kind, self.options.event_source_overrides.get(function_name), self.options.event_sources_file
        )

    def _start_event_sources(self) -> None:
        assert self.app_module is not None and self.resources is not None
        app = self.app_module.app
        unknown = set(self.options.event_source_overrides) - {source.name for source in app.event_sources}
        if unknown:
            raise ValueError(f"event_source_overrides names no event source of the app: {', '.join(sorted(unknown))}")
        for source in app.event_sources:
            poller: SqsPoller | StreamPoller
            if isinstance(source, SQSEventConfig):
                settings = self.mapping_settings(source.name, SQS)
                queue_url = self.client("sqs").get_queue_url(QueueName=source.queue)["QueueUrl"]
                poller = SqsPoller(
                    self.client("sqs"),
                    function_name=source.name,
                    handler=self.handler(source.handler_string),
                    invoke=self.invoker,
                    queue_url=queue_url,
                    queue_arn=self._queue_arn(queue_url),
                    region=REGION,
                    batch_size=settings.batch_size or source.batch_size,
                    batching_window=_first(settings.batching_window, source.maximum_batching_window_in_seconds),
                    settings=settings,
                    faults=self.options.faults,
                )
                count = self.options.processor_concurrency
            elif isinstance(source, DynamoDBEventConfig):
                settings = self.mapping_settings(source.name, DYNAMODB)
                poller = StreamPoller(
                    self.client("dynamodbstreams"),
                    function_name=source.name,
                    handler=self.handler(source.handler_string),
                    invoke=self.invoker,
                    stream_arn=source.stream_arn,
                    region=REGION,
                    batch_size=settings.batch_size or source.batch_size,
                    batching_window=_first(settings.batching_window, source.maximum_batching_window_in_seconds),
                    starting_position=settings.starting_position or source.starting_position,
                    settings=settings,
                    on_failure=self._send_stream_failure,
                    faults=self.options.faults,
                )
                count = 1
            else:
                continue
            self.pollers[source.name] = poller
            self._poller_counts[source.name] = count
            if source.name not in self.options.paused and settings.enabled:
                self.resume(source.name)
        inbox = AlertInbox(self.client("sqs"), self.resources.alert_inbox_url, self._record_alert)
        inbox.start()
        self._workers.append(inbox)

    def resume(self, function_name: str) -> None:
        """Start a paused event source (as enabling its mapping): it begins where its source stands."""
        poller = self.pollers[function_name]
        if poller in self._workers:
            raise ValueError(f"the event source of {function_name!r} is already running")
        poller.start(self._poller_counts[function_name])
        self._workers.append(poller)

    def _send_stream_failure(self, record: dict[str, Any]) -> None:
        """The stream mapping's on-failure destination: the stack's <table>-stream-failures queue."""
        assert self.resources is not None
        self.client("sqs").send_message(QueueUrl=self.resources.stream_failures_url, MessageBody=json.dumps(record))

    def _queue_arn(self, queue_url: str) -> str:
        attributes = self.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return attributes["Attributes"]["QueueArn"]

    def start_chalice_local(self, port: int, **popen: Any) -> subprocess.Popen:
        """`chalice local --stage <stage>` on 127.0.0.1:port, talking to this stack's moto server.

        One process (no auto-reloader, whose server would be a grandchild), in a session of
        its own (a terminal's Ctrl-C reaches the stack, which stops it), that ends when this
        process ends, even by kill -9 (batchdrain_local.lifeline).
        """
        chalice = Path(sys.executable).parent / "chalice"
        argv = [str(chalice), "local", "--no-autoreload", "--stage", self.options.stage, "--host", "127.0.0.1", "--port", str(port)]
        return subprocess.Popen(
            lifeline.command(os.getpid(), argv),
            cwd=PROJECT_DIR,
            env={**os.environ, **self.environment()},
            start_new_session=True,
            **popen,
        )

    # -- driving it ----------------------------------------------------------------

    def fire_schedule(self, definition: str, at: datetime | None = None) -> Any:
        """Deliver the definition's scheduled event for slot `at` (default: this minute), as EventBridge does."""
        assert self.app_module is not None
        if definition not in self.app_module.DEFINITIONS:
            raise KeyError(f"no definition {definition!r} (have: {', '.join(sorted(self.app_module.DEFINITIONS))})")
        return self._fire_rule(self.app_module.DEFINITIONS[definition].handler_name, at)

    def sweep(self, at: datetime | None = None) -> Any:
        """Deliver the sweeper's scheduled event now, as its rate rule does."""
        return self._fire_rule("sweep", at)

    def _fire_rule(self, function_name: str, at: datetime | None) -> Any:
        slot = (at or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
        rule_arn = f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/batchdrain-{self.options.stage}-{function_name}"
        return self.invoke(function_name, events.scheduled_event(slot, rule_arn, ACCOUNT_ID, REGION))

    def _start_sweeper(self, speed: float) -> None:
        """Run the sweeper at its deployed rate, `speed` times faster; one sweep at a time, as it is cheap."""
        assert self.app_module is not None
        (source,) = [s for s in self.app_module.app.event_sources if isinstance(s, ScheduledEventConfig) and s.name == "sweep"]

        def fire(name: str, slot: datetime) -> None:
            try:
                self._fire_rule(name, slot)
            except InvocationCrashed:
                pass  # EventBridge fires the next slot all the same
            except Exception:
                traceback.print_exc()

        clock = AcceleratedClock({"sweep": source.schedule_expression.to_string()}, fire, speed)
        clock.start()
        self._workers.append(clock)

    def start_clock(self, speed: float, start: datetime | None = None) -> AcceleratedClock:
        """Fire every definition's schedule at its slots, with time running `speed` times faster.

        Each slot is fired in its own thread, as EventBridge invokes asynchronously.
        """
        assert self.app_module is not None
        schedules = {name: definition.schedule for name, definition in self.app_module.DEFINITIONS.items()}

        def fire(name: str, slot: datetime) -> None:
            threading.Thread(target=self.fire_schedule, args=(name, slot), daemon=True).start()

        clock = AcceleratedClock(schedules, fire, speed, start)
        clock.start()
        self._workers.append(clock)
        return clock

    def _record_alert(self, alert: dict[str, Any]) -> None:
        with self._alerts_changed:
            self.alerts.append(alert)
            self._alerts_changed.notify_all()
        if self.on_alert:
            self.on_alert(alert)

    def alerts_for(self, batch_id: str) -> list[dict[str, Any]]:
        with self._alerts_changed:
            return [alert for alert in self.alerts if alert["message"]["batch_id"] == batch_id]

    def wait_for_alert(self, batch_id: str, timeout: float) -> dict[str, Any]:
        """Block until the batch's first alert arrives; TimeoutError says how far it got."""
        deadline = time.monotonic() + timeout
        with self._alerts_changed:
            while True:
                matching = [alert for alert in self.alerts if alert["message"]["batch_id"] == batch_id]
                if matching:
                    return matching[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no alert for {batch_id} after {timeout} s; header: {self.header(batch_id)}")
                self._alerts_changed.wait(min(remaining, 0.5))

    def header(self, batch_id: str) -> dict[str, Any] | None:
        from chalicelib.store import BatchStore

        assert self.resources is not None
        return BatchStore(self.resources.table_name, self.client("dynamodb")).get_header(batch_id)

    def chunks_left(self, batch_id: str, shards: int) -> int:
        """Chunk rows still in the table (progress display; counts every shard)."""
        from chalicelib import model

        assert self.resources is not None
        dynamodb = self.client("dynamodb")
        total = 0
        for shard in range(shards):
            kwargs: dict[str, Any] = {
                "TableName": self.resources.table_name,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :c)",
                "ExpressionAttributeValues": {":pk": {"S": model.shard_pk(batch_id, shard)}, ":c": {"S": model.CHUNK_PREFIX}},
                "Select": "COUNT",
                "ConsistentRead": True,
            }
            while True:  # a COUNT page stops at 1 MB of rows read
                response = dynamodb.query(**kwargs)
                total += response["Count"]
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return total
