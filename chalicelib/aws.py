"""Lazy boto3 clients, built once per process on first use.

botocore honours AWS_ENDPOINT_URL (and per-service variants), so pointing these at the
local stack's moto server or at moto's in-process mock needs no code here.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode backs off on throttling, which on-demand tables and SQS return
# under bursts; adaptive would add client-side rate limiting we do not need.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@functools.lru_cache(maxsize=None)
def session() -> boto3.session.Session:
    """The one session all clients come from; its event hooks see every request (metrics, tests)."""
    return boto3.session.Session()


@functools.lru_cache(maxsize=None)
def client(service: str) -> Any:
    """The shared client for `service` ('dynamodb', 'sqs', 'sns')."""
    return session().client(service, config=_CONFIG)


@functools.lru_cache(maxsize=None)
def queue_url(queue_name: str) -> str:
    """The URL of a queue by name, looked up once per process (names come from stage config)."""
    return client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]


def reset_clients() -> None:
    """Forget cached clients and URLs, so the next call reads the environment again (tests, local stack)."""
    client.cache_clear()
    queue_url.cache_clear()
    session.cache_clear()
