"""How long a write may keep its caller waiting (``services.grpc_api.deadlines``)."""

from __future__ import annotations

import asyncio

import pytest

from services.errors import OutcomeUnknown
from services.grpc_api.deadlines import within, write_budget


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


async def test_a_write_past_its_budget_raises_outcome_unknown_and_one_in_time_returns() -> None:
    assert await within(1, asyncio.sleep(0.01, "written")) == "written"
    with pytest.raises(OutcomeUnknown, match=r"within 0\.05 s"):
        await within(0.05, asyncio.sleep(5))
