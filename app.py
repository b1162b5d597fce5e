"""batchdrain: every entry point of the service on one screen. The work is in chalicelib/."""

from __future__ import annotations

from functools import lru_cache

from chalice import Chalice, IAMAuthorizer, Rate, Response

from chalicelib import api, batcher, deadletters, finalizer, log, model, planner, processor, sweeper
from chalicelib.config import EventSourceSettings, Settings, load_definitions
from chalicelib.errors import BadRequestError
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
        return batcher.create_scheduled_batch(definition, event.time, settings(), EVENT_SOURCES)

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


# -- the HTTP API (chalicelib/api.py; docs/api.md). Deployed stages: IAM (SigV4) on every route;
# the local stage: `Authorization: Bearer <API_TOKEN>`, checked by `_answer`.
AUTHORIZER = IAMAuthorizer() if EVENT_SOURCES.api_auth == "iam" else None


def _answer(work, status=200):
    """Run a route's work; its JSON with `status`, or the 4xx an ApiError names (never a 500 for bad input)."""
    request = app.current_request
    try:
        if EVENT_SOURCES.api_auth == "token":
            api.authorize_token(request.headers, settings().api_token)
        body = work(BatchStore(settings().table_name))
    except api.ApiError as error:
        return Response(body=error.body(), status_code=error.status, headers={"Content-Type": "application/json"})
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json"})


@app.route("/batches", methods=["POST"], authorizer=AUTHORIZER)
def submit_batch():
    """A batch of a definition now (202), made by the batcher as a cron batch is; Idempotency-Key makes retries safe."""
    request = app.current_request

    def work(store):
        submission = api.submission(request.raw_body, request.headers, DEFINITIONS, model.utc_now(), settings().inbox_uri, EVENT_SOURCES)
        api.store_items(store, submission)  # inline items: their inbox object, before the batch that reads it
        try:
            header = batcher.create_batch(
                submission.definition,
                model.utc_now(),
                settings(),
                batch_id=submission.batch_id,
                request=submission.request,
                open_batch=submission.open,
                event_sources=EVENT_SOURCES,
            )
        except BadRequestError as error:  # checked before anything is written (an item too large for a message)
            raise api.ApiError(400, "items_per_message", "too many of the definition's items for one message") from error
        return api.submitted(header, submission)

    return _answer(work, status=202)


@app.route("/batches/{batch_id}/items", methods=["POST"], authorizer=AUTHORIZER)
def add_items(batch_id):
    """Items for an open batch (202): one inbox object and one segment; its Idempotency-Key makes a retry add nothing."""
    request = app.current_request
    return _answer(lambda store: api.add_items(store, batch_id, request.raw_body, request.headers, settings()), status=202)


@app.route("/batches/{batch_id}/seal", methods=["POST"], authorizer=AUTHORIZER)
def seal_batch(batch_id):
    """An open batch takes no more items (202); it completes once they have run."""
    return _answer(lambda store: api.seal(store, batch_id), status=202)


@app.route("/batches", methods=["GET"], authorizer=AUTHORIZER)
def list_batches():
    return _answer(lambda store: api.list_batches(store, app.current_request.query_params))


@app.route("/batches/{batch_id}", methods=["GET"], authorizer=AUTHORIZER)
def get_batch(batch_id):
    return _answer(lambda store: api.get_batch(store, batch_id))


@app.route("/batches/{batch_id}/wait", methods=["GET"], authorizer=AUTHORIZER)
def wait_for_batch(batch_id):
    return _answer(lambda store: api.wait_for(store, batch_id, app.current_request.query_params))


@app.route("/batches/{batch_id}/failures", methods=["GET"], authorizer=AUTHORIZER)
def list_failures(batch_id):
    return _answer(lambda store: api.list_failures(store, batch_id, app.current_request.query_params))


@app.route("/batches/{batch_id}/redrive", methods=["POST"], authorizer=AUTHORIZER)
def redrive_batch(batch_id):
    return _answer(lambda store: api.redrive(store, batch_id, settings()), status=202)


@app.route("/batches/{batch_id}/cancel", methods=["POST"], authorizer=AUTHORIZER)
def cancel_batch(batch_id):
    return _answer(lambda store: api.cancel(store, batch_id, settings()), status=202)
