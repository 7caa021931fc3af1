"""``CallIds`` on a streaming call that gRPC stops iterating: the request id it set
is not restored from another task, whose context never held it."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.grpc_api.interceptors import CallIds
from services.log_context import REQUEST_ID


@dataclasses.dataclass
class Details:
    method: str


class Context:
    def invocation_metadata(self) -> Any:
        return (("x-request-id", "call-1"),)

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass


async def test_a_stream_left_at_a_reply_is_closed_from_another_task_cleanly():
    """gRPC cancels a call whose deadline passes while it sends a reply, and leaves
    the handler's generator there; asyncio closes it later in a task of its own. The
    id's reset then raised "was created in a different Context" (logged as "Task
    exception was never retrieved")."""
    seen = []

    async def replies(requests: Any, context: Any) -> AsyncIterator[str]:
        seen.append(REQUEST_ID.get())
        yield "first"
        yield "second"

    details: Any = Details("/consent.v1.ConsentService/ImportConsents")
    handler = CallIds()._wrap(details, grpc.stream_stream_rpc_method_handler(replies))

    async def call() -> AsyncIterator[str]:
        stream = handler.stream_stream(iter(()), Context())
        assert await stream.__anext__() == "first"
        return stream

    stream = await asyncio.create_task(call())  # the call's own task, as in gRPC
    closing = asyncio.get_running_loop().create_task(
        stream.aclose(),
        context=contextvars.Context(),  # as asyncio's finalizer does
    )
    await closing  # raised ValueError
    assert seen == ["call-1"]
    assert REQUEST_ID.get() is None  # the id never reached the test's own context
