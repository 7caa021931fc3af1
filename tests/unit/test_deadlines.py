"""How long a write may keep its caller waiting (``services.grpc_api.deadlines``)."""

from __future__ import annotations

import asyncio

import pytest

from services.errors import OutcomeUnknown
from services.grpc_api.deadlines import within, write_budget
from tests.loop_time import in_loop_time

# The waits are bounded in loop time on a loop of their own (``in_loop_time``): a
# loaded machine makes a run slower, never a bound run out early.


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_a_write_waits_at_most_the_configured_limit_without_a_deadline() -> None:
    assert write_budget(_Context(None), 10) == 10  # type: ignore[arg-type]
    assert write_budget(_Context(60), 10) == 10  # type: ignore[arg-type]


def test_a_write_gives_up_before_the_caller_s_deadline_keeping_time_for_the_answer() -> None:
    assert write_budget(_Context(3), 10) == pytest.approx(2.7)  # type: ignore[arg-type]
    assert write_budget(_Context(9), 10) == pytest.approx(8.5)  # type: ignore[arg-type]
    assert write_budget(_Context(0), 10) == 0  # type: ignore[arg-type]
    assert write_budget(_Context(-1), 10) == 0  # type: ignore[arg-type]


@in_loop_time
async def test_a_write_past_its_budget_raises_outcome_unknown_and_one_in_time_returns() -> None:
    assert await within(1, asyncio.sleep(0.01, "written")) == "written"
    with pytest.raises(OutcomeUnknown, match=r"within 0\.05 s"):
        await within(0.05, asyncio.sleep(5))


@in_loop_time
async def test_a_write_that_is_slow_to_cancel_still_answers_in_its_budget() -> None:
    """asyncpg, cancelled mid-query on a frozen server, waits for the server to answer
    the cancellation; the caller must not wait with it."""

    async def frozen_query() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # the cancellation's answer, which comes late
            raise

    started = asyncio.get_running_loop().time()
    with pytest.raises(OutcomeUnknown):
        await within(0.05, frozen_query())
    assert asyncio.get_running_loop().time() - started < 0.5
