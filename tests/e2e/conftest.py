"""Fixtures the end-to-end tests share."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from services.bootstrap import Runtime
from tests.e2e.harness import serving


@pytest.fixture
async def serve(
    tmp_path, postgres_dsn, kafka_bootstrap
) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    """Starts a service on the suite's broker and database: ``await serve(name=...,
    clock=..., campaigns=[...], console_listen=...)`` takes ``harness.serving``'s
    parameters. Each service it started is stopped after the test."""
    async with AsyncExitStack() as started:

        async def serve(**parameters: Any) -> Runtime:
            return await started.enter_async_context(
                serving(tmp_path, postgres_dsn, kafka_bootstrap, **parameters)
            )

        yield serve
