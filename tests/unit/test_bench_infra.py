"""On a broker others share, the bench deletes the topics its run made and no others."""

from __future__ import annotations

import pytest

from bench import infra as bench_infra
from bench.infra import Infra, own_topics


def test_only_topics_under_the_runs_prefix_made_during_the_run_are_its_own() -> None:
    before = {"consent.subscribers", "bench-aaaa.old"}
    made = {"bench-aaaa.subscribers", "bench-aaaa.raw-1.campaigns"}
    others = {"bench-bbbb.subscribers", "xbench-aaaa.subscribers"}
    now = before | made | others
    assert own_topics(now, before, "bench-aaaa.") == [
        "bench-aaaa.raw-1.campaigns",
        "bench-aaaa.subscribers",
    ]


def _infra(
    monkeypatch: pytest.MonkeyPatch, now: set[str], before: set[str] | None
) -> tuple[Infra, list[str]]:
    """An Infra on broker:9092 whose topics are ``now`` (``before`` at its start, None
    for a broker of its own), and the list the topics it deletes go to."""
    deleted: list[str] = []

    async def topic_names(bootstrap: str) -> set[str]:
        assert bootstrap == "broker:9092"
        return now

    async def delete_topics(bootstrap: str, topics: list[str]) -> dict[str, int]:
        deleted.extend(topics)
        return {}

    monkeypatch.setattr(bench_infra, "topic_names", topic_names)
    monkeypatch.setattr(bench_infra, "delete_topics", delete_topics)
    infra = Infra()
    infra.bootstrap, infra.prefix, infra._topics_before = "broker:9092", "bench-aaaa.", before
    return infra, deleted


async def test_stop_deletes_the_runs_topics_on_a_reused_broker(monkeypatch) -> None:
    now = {"shared", "bench-aaaa.was-there", "bench-aaaa.subscribers", "bench-bbbb.subscribers"}
    infra, deleted = _infra(monkeypatch, now, before={"shared", "bench-aaaa.was-there"})
    await infra.stop()
    assert deleted == ["bench-aaaa.subscribers"]


async def test_stop_leaves_topics_alone_on_a_broker_of_its_own(monkeypatch) -> None:
    infra, deleted = _infra(monkeypatch, {"bench-aaaa.subscribers"}, before=None)
    await infra.stop()
    assert deleted == []


async def test_a_failed_delete_is_said_and_the_rest_of_stop_still_runs(monkeypatch, capsys) -> None:
    infra, _ = _infra(monkeypatch, set(), before=set())

    async def unreachable(bootstrap: str) -> set[str]:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(bench_infra, "topic_names", unreachable)
    await infra.stop()
    assert "could not delete topics bench-aaaa.*" in capsys.readouterr().err
    assert not infra.tmp.exists()
