"""The ``app`` fixture: the use cases on the in-memory adapters, projector running."""

import pytest

from tests.unit.usecase_harness import running


@pytest.fixture
async def app():
    async with running() as (app, _):
        yield app
