"""What a reader passes through following one CanSend call: the project files
(``ledger/``, ``services/``) the call's own asyncio task runs code in, traced with
``sys.setprofile``, and the lists they must stay within. The unit test traces the
use cases on the in-memory adapters; the end-to-end one, the service as it serves
(the digest replica over PostgreSQL). A new file on the path fails them: merge it
into the module a reader would look in, or add it here saying why it earns its place.

Measured with ``traced`` (the same code) over a unary CanSend that is allowed, so
the whole policy runs."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT = (str(ROOT / "ledger") + os.sep, str(ROOT / "services") + os.sep)

INTERCEPTORS = {
    "services/grpc_api/interceptors.py",  # call ids, per-call metrics
    "services/grpc_api/admission.py",  # who calls, at what rate, with what body
    "services/grpc_api/auth.py",  # the token's scopes and brands
    "services/metrics.py",  # what the interceptors and the servicer count
}
"""Before and around the handler."""

READING_PATH = {
    "services/grpc_api/servicer.py",  # proto to request, call, result to proto
    "services/grpc_api/errors.py",  # errors to status codes, in one place
    "services/wire/api.py",  # the API's messages <-> the domain
    "services/wire/enums.py",  # the enums of both, by name
    "services/usecases/checks.py",  # CanSend
    "services/freshness.py",  # the consistency rule
    "services/adapters/digest_replica.py",  # the digests and campaign rules in memory
    "ledger/ports.py",  # ConsistencyToken
    "ledger/policy.py",  # the decision
    "ledger/digest.py",  # what the policy reads of a number
    "ledger/state.py",  # the campaign's rules as of the time asked
    "ledger/campaigns.py",  # the campaign's policy
    "ledger/state_rules.py",  # the recipient's state's hours and caps
}
"""The service's path from the servicer to the domain, as ``make run`` serves it."""

SERVED_PATH = READING_PATH | {
    "services/wire/compact_digest.py",  # the replica's digests, decoded
    "services/adapters/postgres_ledger.py",  # the phone's partition, while the view is behind
}

IN_MEMORY_PATH = READING_PATH | {
    "services/adapters/memory_view.py",  # the view's digests, folded on the call
    "services/adapters/memory_ledger.py",  # the phone's partition, while the view is behind
    "ledger/events.py",  # the events that fold
    "ledger/validation.py",
    "ledger/regions.py",
}


class Trace:
    """The project files each asyncio task runs code in, while installed."""

    def __init__(self) -> None:
        self.files: dict[int, set[str]] = {}
        self.calls: set[int] = set()
        """The tasks that ran the servicer's CanSend: the call's own."""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_code.co_filename
        if event != "call" or not name.startswith(PROJECT):
            return
        try:
            task = id(asyncio.current_task())
        except RuntimeError:  # a thread without an event loop
            task = 0
        path = Path(name).relative_to(ROOT).as_posix()
        self.files.setdefault(task, set()).add(path)
        if frame.f_code.co_name == "CanSend" and path == "services/grpc_api/servicer.py":
            self.calls.add(task)

    def of_the_call(self) -> set[str]:
        return {path for task in self.calls for path in self.files[task]}


async def traced(call: Callable[[], Awaitable[Any]]) -> tuple[Any, set[str]]:
    """``call``'s answer and the files the CanSend it makes runs code in."""
    trace = Trace()
    sys.setprofile(trace)
    try:
        answer = await call()
    finally:
        sys.setprofile(None)
    return answer, trace.of_the_call()
