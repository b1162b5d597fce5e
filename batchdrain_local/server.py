"""moto in server mode on 127.0.0.1, on a free port, inside this process."""

from __future__ import annotations

import functools
import logging
import threading
import urllib.request

from moto.server import ThreadedMotoServer

# Environment every client of the local stack needs. moto's default account is
# 123456789012; AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled stops current botocore from
# routing DynamoDB (Streams) calls to account-id endpoints moto does not serve.
CLIENT_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
ACCOUNT_ID = "123456789012"
# moto's server handles requests on many threads but checks a condition and applies the
# write without a lock: measured, 1 in 200 races of 8 conditional updates had 2 winners.
# DynamoDB serializes writes to an item, and invariant 4 rests on that, so writes here
# go through one lock.
_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_WRITE_LOCK = threading.RLock()


def make_dynamodb_writes_atomic() -> None:
    """Serialize moto's DynamoDB writes (idempotent; patches the backend class once)."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _DYNAMODB_WRITES:
        method = getattr(DynamoDBBackend, name)
        if getattr(method, "_batchdrain_atomic", False):
            continue

        @functools.wraps(method)
        def atomic(self, *args, __method=method, **kwargs):
            with _WRITE_LOCK:
                return __method(self, *args, **kwargs)

        atomic._batchdrain_atomic = True
        setattr(DynamoDBBackend, name, atomic)


class MotoServer:
    """A moto server thread bound to 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        make_dynamodb_writes_atomic()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.reset()
        return self.endpoint_url

    def reset(self) -> None:
        """Empty every moto backend: they are per process, so an earlier stack's resources linger."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()
