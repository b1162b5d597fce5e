"""batchdrain: every entry point of the service on one screen. The work is in chalicelib/."""

from __future__ import annotations

from functools import lru_cache

from chalice import Chalice, NotFoundError, Rate

from chalicelib import batcher, deadletters, finalizer, log, model, planner, processor, sweeper
from chalicelib.config import EventSourceSettings, Settings, load_definitions
from chalicelib.store import BatchStore

app = Chalice(app_name="batchdrain")
log.configure()
EVENT_SOURCES = EventSourceSettings.from_env()
# The user's definitions and task modules, checked at import: a bad file fails the deploy, not the
# 06:00 run (every problem a line, `file:line: field: what`; `batchdrain validate` prints the same).
DEFINITIONS = load_definitions(event_sources=EVENT_SOURCES)


@lru_cache(maxsize=None)
def settings() -> Settings:
    return Settings.from_env()


settings()  # every setting checked at import too: a bad value fails the deploy, not the first message


def _register_schedule(definition):
    def fire(event):
        return batcher.create_scheduled_batch(definition, event.time, settings())

    fire.__name__ = definition.handler_name  # Lambda resolves the handler as app.<name>
    return app.schedule(definition.schedule, name=definition.handler_name, description=definition.description)(fire)


for _definition in DEFINITIONS.values():
    globals()[_definition.handler_name] = _register_schedule(_definition)


@app.on_sqs_message(
    queue=EVENT_SOURCES.work_queue_name,
    batch_size=EVENT_SOURCES.processor_batch_size,
    maximum_batching_window_in_seconds=EVENT_SOURCES.processor_batching_window,
    maximum_concurrency=EVENT_SOURCES.processor_max_concurrency,
)
def process_work(event):
    return processor.handle_sqs_event(event.to_dict(), settings(), event.context)


@app.on_sqs_message(
    queue=EVENT_SOURCES.planning_queue_name,
    batch_size=1,
    maximum_concurrency=EVENT_SOURCES.planner_max_concurrency,
)
def plan_segments(event):
    # One segment per invocation: each gets a whole Lambda lifetime to write its chunks.
    return planner.handle_sqs_event(event.to_dict(), settings(), event.context)


@app.on_sqs_message(queue=EVENT_SOURCES.dead_letter_queue_name, batch_size=10)
def drain_dead_letters(event):
    return deadletters.handle_sqs_event(event.to_dict(), settings())


@app.on_dynamodb_record(
    stream_arn=EVENT_SOURCES.table_stream_arn,
    batch_size=EVENT_SOURCES.finalizer_batch_size,
    maximum_batching_window_in_seconds=EVENT_SOURCES.finalizer_batching_window,
    # The finalizer is idempotent, so replaying retained records after a mapping is
    # recreated is harmless, while LATEST could skip the record that ends a batch.
    starting_position="TRIM_HORIZON",
)
def finalize(event):
    finalizer.handle_stream_event(event.to_dict(), settings(), DEFINITIONS)


@app.schedule(Rate(EVENT_SOURCES.sweep_minutes, unit=Rate.MINUTES), description="batchdrain sweeper")
def sweep(event):
    sweeper.sweep(settings(), DEFINITIONS)


@app.route("/batches/{batch_id}")
def get_batch(batch_id):
    header = BatchStore(settings().table_name).get_header(batch_id)
    if header is None:
        raise NotFoundError(f"batch {batch_id!r} not found")
    return model.batch_view(header)
