"""The local stack: moto in server mode plus pollers that drive the app's real handlers.

Not deployed. `python -m batchdrain_local demo` runs one batch end to end;
`python -m batchdrain_local up` keeps the stack (and `chalice local`) running.
"""

from batchdrain_local.stack import LocalStack, StackOptions

__all__ = ["LocalStack", "StackOptions"]
