"""Creating the ledger's topics while the broker's metadata names no controller."""

from __future__ import annotations

import pytest

from services.adapters import kafka_ledger


class _Admin:
    """Fails as aiokafka does while no controller is known, ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def create_topics(self, new_topics):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise AttributeError("'NoneType' object has no attribute 'nodeId'")
        return "created"


async def test_topics_are_created_once_a_controller_is_known(monkeypatch):
    monkeypatch.setattr(kafka_ledger.asyncio, "sleep", _no_sleep)
    admin = _Admin(failures=2)
    assert await kafka_ledger._create_topics(admin, []) == "created"  # type: ignore[arg-type]
    assert admin.calls == 3


async def test_a_controller_that_never_comes_is_an_error(monkeypatch):
    monkeypatch.setattr(kafka_ledger.asyncio, "sleep", _no_sleep)
    admin = _Admin(failures=99)
    with pytest.raises(AttributeError):
        await kafka_ledger._create_topics(admin, [])  # type: ignore[arg-type]
    assert admin.calls == kafka_ledger._CONTROLLER_LOOKS


async def _no_sleep(_: float) -> None:
    return None
