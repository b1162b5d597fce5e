"""The baseline on a running local stack: its own table, stream and queue on the same moto
server, driven by the local stack's own pollers with batchdrain's deployed mapping settings.

    baseline = BaselineRun(stack, on_item_done=record).start()
    baseline.fire(slot, items)        # the cron event; returns when the batch is sealed
    ...                               # the alert arrives on the stack's alert inbox
    baseline.stop()

Same machine, same process, same emulator and same pollers as batchdrain's run, so the
two differ only in what the handlers do. The alert goes to the stack's alert topic, so
`stack.wait_for_alert(batch_id)` sees it exactly as it sees batchdrain's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

import boto3
from botocore.config import Config

from batchdrain_local import events
from batchdrain_local.eventsources import DYNAMODB, SQS, MappingSettings
from batchdrain_local.pollers import SqsPoller, StreamPoller
from batchdrain_local.server import ACCOUNT_ID
from batchdrain_local.stack import REGION, LocalStack
from bench.baseline.handlers import HEADER_SK, ITEM_PREFIX, Baseline
from bench.measure import RequestLedger

TABLE = "baseline-items"
QUEUE = "baseline-work"
PROCESS, FINALIZE, BATCH = "baseline_process", "baseline_finalize", "baseline_batch"
# What the finalizer is invoked for: row REMOVEs and the seal (batchdrain's filter has the same shape).
STREAM_FILTER = {
    "Filters": [
        {"Pattern": f'{{"eventName":["REMOVE"],"dynamodb":{{"Keys":{{"sk":{{"S":[{{"prefix":"{ITEM_PREFIX}"}}]}}}}}}}}'},
        {
            "Pattern": f'{{"dynamodb":{{"Keys":{{"sk":{{"S":["{HEADER_SK}"]}}}},'
            '"NewImage":{"status":{"S":["SEALED"]}},"OldImage":{"status":{"S":["CREATING"]}}}}'
        },
    ]
}


class BaselineRun:
    """The baseline's resources, handlers and pollers on `stack`'s moto server.

    `requests` counts the baseline handlers' own AWS requests (as the stack's
    RequestCounter counts the app's); `poller_requests` the pollers' (Lambda's side).
    """

    def __init__(self, stack: LocalStack, on_item_done: Callable[[], None] = lambda: None, task: Callable[[dict], Any] | None = None):
        self.stack = stack
        self.requests = RequestLedger()
        self.poller_requests = RequestLedger()
        session = boto3.session.Session()
        self.requests.attach(session)
        config = Config(retries={"mode": "standard", "max_attempts": 5})  # as chalicelib.aws's clients
        self._clients = {
            service: session.client(service, endpoint_url=stack.endpoint_url, region_name=REGION, config=config)
            for service in ("dynamodb", "sqs", "sns")
        }
        self.on_item_done = on_item_done
        self.task = task or (lambda item: None)
        self.handlers: Baseline | None = None
        self._pollers: list[Any] = []

    def start(self) -> "BaselineRun":
        assert self.stack.resources is not None
        dynamodb, sqs = self.stack.client("dynamodb"), self.stack.client("sqs")
        table = dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]
        queue_url = sqs.create_queue(
            QueueName=QUEUE, Attributes={"VisibilityTimeout": str(self.stack.options.visibility_timeout)}
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.handlers = Baseline(
            self._clients.__getitem__,
            table_name=TABLE,
            queue_url=queue_url,
            topic_arn=self.stack.resources.alert_topic_arn,
            task=self.task,
            on_item_done=self.on_item_done,
        )
        # batchdrain's deployed mapping settings, so only the handlers differ.
        work = self.stack.mapping_settings("process_work", SQS)
        stream = self.stack.mapping_settings("finalize", DYNAMODB)
        app_sources = {source.name: source for source in self.stack.app_module.app.event_sources}
        sqs_client, streams_client = self.stack.client("sqs"), self.stack.client("dynamodbstreams")
        self.poller_requests.attach(sqs_client)
        self.poller_requests.attach(streams_client)
        processor = SqsPoller(
            sqs_client,
            function_name=PROCESS,
            handler=self.handlers.process,
            invoke=self.stack.invoker,
            queue_url=queue_url,
            queue_arn=queue_arn,
            region=REGION,
            batch_size=work.batch_size or app_sources["process_work"].batch_size,
            batching_window=app_sources["process_work"].maximum_batching_window_in_seconds or 0,
            settings=MappingSettings(report_batch_item_failures=True),
        )
        finalizer = StreamPoller(
            streams_client,
            function_name=FINALIZE,
            handler=self.handlers.finalize,
            invoke=self.stack.invoker,
            stream_arn=table["LatestStreamArn"],
            region=REGION,
            batch_size=app_sources["finalize"].batch_size,
            batching_window=app_sources["finalize"].maximum_batching_window_in_seconds,
            starting_position="TRIM_HORIZON",
            settings=MappingSettings.from_properties(
                {
                    "FilterCriteria": STREAM_FILTER,
                    "BisectBatchOnFunctionError": stream.bisect_batch_on_function_error,
                    "MaximumRetryAttempts": stream.maximum_retry_attempts,
                },
                where="baseline finalizer",
            ),
        )
        processor.start(self.stack.options.processor_concurrency)
        finalizer.start(1)
        self._pollers = [processor, finalizer]
        return self

    def fire(self, slot: datetime, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Deliver the baseline's cron event for `slot` (through the stack's invoker, as batchdrain's)."""
        assert self.handlers is not None
        rule = f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/baseline-batch"
        event = events.scheduled_event(slot, rule, ACCOUNT_ID, REGION)
        return self.stack.invoker(BATCH, lambda event, context: self.handlers.create_batch(event, context, items=items), event)

    def stop(self) -> None:
        for poller in self._pollers:
            poller.stopping.set()
        for poller in self._pollers:
            poller.stop()
        self._pollers = []
