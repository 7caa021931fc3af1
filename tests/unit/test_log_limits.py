"""``RepeatLimiter``: a bounded number of lines of one kind, and a count of the rest."""

from __future__ import annotations

import logging

import pytest

from services.log_limits import RepeatLimiter, limited


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def setup():
    kept, clock = Kept(), Clock()
    limiter = RepeatLimiter(kept, limit=3, interval=60, clock=clock)
    logger = logging.getLogger("test_log_limits")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(limiter)
    yield logger, kept, clock, limiter
    logger.removeHandler(limiter)


def refuse(logger: logging.Logger, who: int) -> None:
    logger.warning("refused caller %d", who)  # one kind: this line of the code


def other(logger: logging.Logger) -> None:
    logger.info("something else")


def test_a_kind_is_written_up_to_its_limit_then_counted(setup) -> None:
    logger, kept, _, _ = setup
    for who in range(1000):
        refuse(logger, who)
    assert kept.messages() == ["refused caller 0", "refused caller 1", "refused caller 2"]


def test_another_kind_has_its_own_limit(setup) -> None:
    logger, kept, _, _ = setup
    for who in range(10):
        refuse(logger, who)
    other(logger)
    assert kept.messages()[-1] == "something else"
    assert len(kept.records) == 4


def test_the_next_line_of_the_kind_after_its_interval_says_how_many_were_not_written(
    setup,
) -> None:
    logger, kept, clock, _ = setup
    for who in range(10):
        refuse(logger, who)
    clock.now += 61
    refuse(logger, 10)
    summary, line = kept.records[-2:]
    assert summary.getMessage().startswith("suppressed 7 similar lines in 60 s")
    assert "refused caller %d" in summary.getMessage()
    assert summary.levelno == logging.WARNING and summary.name == "test_log_limits"
    assert summary.suppressed == 7  # type: ignore[attr-defined]
    assert line.getMessage() == "refused caller 10"  # a new interval: written again


def test_a_line_of_any_kind_after_the_interval_brings_the_summary(setup) -> None:
    logger, kept, clock, _ = setup
    for who in range(5):
        refuse(logger, who)
    clock.now += 3600  # held back within its 60 s, however late the summary comes
    other(logger)
    assert [m.split(" (")[0] for m in kept.messages()[-2:]] == [
        "suppressed 2 similar lines in 60 s",
        "something else",
    ]


def test_closing_writes_what_is_still_counted(setup) -> None:
    logger, kept, _, limiter = setup
    for who in range(4):
        refuse(logger, who)
    limiter.close()
    assert kept.messages()[-1].startswith("suppressed 1 similar lines")


def test_no_summary_when_nothing_was_held_back(setup) -> None:
    logger, kept, clock, limiter = setup
    refuse(logger, 1)
    clock.now += 61
    refuse(logger, 2)
    limiter.close()
    assert kept.messages() == ["refused caller 1", "refused caller 2"]


def test_a_limit_of_zero_limits_nothing() -> None:
    handler = Kept()
    assert limited(handler, 0, 60) is handler
    assert isinstance(limited(handler, 5, 60), RepeatLimiter)
