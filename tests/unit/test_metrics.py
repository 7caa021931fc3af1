"""``ServiceMetrics``: what the handlers count and what a scrape reads, and the
freshness guard's status it reads from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from ledger.events import DeliveryOutcome, DeliveryOutcomeReported
from ledger.health import CampaignHealth, HealthCounts, HealthLimits, HealthReport, SenderHealth
from ledger.policy import Decision, Reason, deny
from ledger.ports import LedgerUnavailable, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.freshness import FreshnessGuard, FreshnessStatus
from services.grpc_api.servicer import ConsentServicer
from services.metrics import ServiceMetrics, TimedAppends
from services.settings import FreshnessSettings
from tests.builders import BRAND, at, granted, revoked, sent

ALLOWED = Decision(True, Reason.CONSENT_ACTIVE)
REVOKED = deny(Reason.REVOKED, "opted out")


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry().get_sample_value(name, labels)


def test_decisions_are_counted_per_method_and_answer() -> None:
    metrics = ServiceMetrics()
    metrics.decided("CanSend", ALLOWED)
    metrics.decided("CanSend", ALLOWED)
    metrics.decided_all("CanSendBatch", [ALLOWED, REVOKED, REVOKED, deny(Reason.REVOKED, "x")])
    metrics.decided_all("CanSendBatch", [REVOKED])

    def decided(rpc: str, allowed: str, reason: str) -> float | None:
        return value(
            metrics, "consent_cansend_decisions_total", rpc=rpc, allowed=allowed, reason=reason
        )

    assert decided("CanSend", "true", "consent_active") == 2
    assert decided("CanSendBatch", "true", "consent_active") == 1
    assert decided("CanSendBatch", "false", "revoked") == 4
    assert decided("CanSend", "false", "revoked") is None


def test_errors_are_counted_per_method_and_status() -> None:
    metrics = ServiceMetrics()
    metrics.failed("RecordOptIn", "INVALID_ARGUMENT")
    metrics.failed("RecordOptIn", "INVALID_ARGUMENT")
    metrics.failed("CanSend", "UNAUTHENTICATED")

    errors = "consent_rpc_errors_total"
    assert value(metrics, errors, rpc="RecordOptIn", code="INVALID_ARGUMENT") == 2
    assert value(metrics, errors, rpc="CanSend", code="UNAUTHENTICATED") == 1


@dataclass
class Watched:
    status: FreshnessStatus


@dataclass
class Replica:
    size: int
    loads: int
    confirmed_at: float = float("-inf")
    unreadable: int = 0


def test_freshness_and_the_replica_are_read_when_scraped() -> None:
    now = [100.0]
    watched = Watched(FreshnessStatus(observed_at=99.75, lag={Stream.SUBSCRIBERS: 3}))
    metrics = ServiceMetrics(
        watched, Replica(size=5, loads=1, unreadable=2), monotonic=lambda: now[0]
    )

    assert value(metrics, "consent_projection_lag_events", stream="subscribers") == 3
    assert value(metrics, "consent_projection_lag_events", stream="campaigns") == 0
    assert value(metrics, "consent_freshness_observation_age_seconds") == 0.25
    assert value(metrics, "consent_replica_digests") == 5
    assert value(metrics, "consent_replica_unreadable_digests") == 2
    assert value(metrics, "consent_replica_loads_total") == 1

    now[0] = 104.0
    watched.status = FreshnessStatus(observed_at=103.5, lag={})
    assert value(metrics, "consent_projection_lag_events", stream="subscribers") == 0
    assert value(metrics, "consent_freshness_observation_age_seconds") == 0.5


def test_lag_per_partition_and_the_replica_age_are_read_when_scraped() -> None:
    now = [100.0]
    status = FreshnessStatus(
        observed_at=99.0,
        lag={Stream.SUBSCRIBERS: 3},
        partition_lag={Stream.SUBSCRIBERS: {0: 0, 1: 3}, Stream.CAMPAIGNS: {0: 0}},
    )
    replica = Replica(size=5, loads=1, confirmed_at=99.5)
    metrics = ServiceMetrics(Watched(status), replica, monotonic=lambda: now[0])
    lag = "consent_projection_partition_lag_events"
    assert value(metrics, lag, stream="subscribers", partition="1") == 3
    assert value(metrics, lag, stream="subscribers", partition="0") == 0
    assert value(metrics, lag, stream="campaigns", partition="0") == 0
    assert value(metrics, "consent_replica_age_seconds") == 0.5
    now[0] = 130.0  # no refresh confirmed it since
    assert value(metrics, "consent_replica_age_seconds") == 30.5


def test_without_a_guard_or_replica_only_the_counters_and_the_process_are_shown() -> None:
    metrics = ServiceMetrics()
    assert value(metrics, "consent_projection_lag_events", stream="subscribers") is None
    assert value(metrics, "consent_replica_digests") is None
    rss = value(metrics, "process_resident_memory_bytes")
    assert rss is not None and rss > 0


async def test_the_guard_reports_what_the_view_has_not_applied_at_each_observation() -> None:
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = FreshnessGuard(ledger, view, FreshnessSettings())
    assert guard.status.observed_at == float("-inf")

    written = await ledger.append([granted(), revoked(granted().occurred_at)])
    await guard.observe()
    assert guard.status.lag == {Stream.SUBSCRIBERS: 2, Stream.CAMPAIGNS: 0}
    first = guard.status.observed_at

    await view.apply(Stream.SUBSCRIBERS, written[:1])
    await guard.observe()
    assert guard.status.lag[Stream.SUBSCRIBERS] == 1
    assert guard.status.observed_at >= first

    await view.apply(Stream.SUBSCRIBERS, written[1:])
    await guard.observe()
    assert guard.status.lag[Stream.SUBSCRIBERS] == 0


def test_every_method_reports_its_errors_under_its_own_name() -> None:
    wrapped = {
        name: method
        for name, method in vars(ConsentServicer).items()
        if hasattr(method, "__wrapped__")
    }
    assert {"CanSend", "RecordOptIn", "DefineCampaign", "ListEvents"} <= wrapped.keys()
    assert {name: m.__name__ for name, m in wrapped.items()} == {name: name for name in wrapped}


async def test_sends_and_delivery_outcomes_are_counted_as_they_are_appended() -> None:
    metrics = ServiceMetrics()
    ledger = TimedAppends(InMemoryLedger(partitions=2), metrics)
    message = sent(at(1))
    await ledger.append([granted(at(0)), message, sent(at(2))])
    await ledger.append([_reported(message, DeliveryOutcome.UNDELIVERABLE)])

    assert value(metrics, "consent_messages_sent_total") == 2
    outcomes = "consent_delivery_outcomes_total"
    assert value(metrics, outcomes, outcome="undeliverable") == 1
    assert value(metrics, outcomes, outcome="failed") == 0  # shown from 0, for rate()
    assert value(metrics, outcomes, outcome="delivered") == 0


async def test_an_append_that_fails_counts_no_send() -> None:
    class Refusing(InMemoryLedger):
        async def append(self, events):
            raise LedgerUnavailable("down")

    metrics = ServiceMetrics()
    with pytest.raises(LedgerUnavailable):
        await TimedAppends(Refusing(), metrics).append([sent(at(1))])
    assert value(metrics, "consent_messages_sent_total") == 0


def test_each_flagged_campaign_and_number_of_a_health_answer_is_counted() -> None:
    metrics = ServiceMetrics()
    errors = HealthCounts(100, 0, 7)
    report = HealthReport(
        BRAND,
        None,
        at(0),
        at(60),
        HealthLimits(),
        (
            CampaignHealth(
                "promo",
                errors,
                (SenderHealth("+12125550100", errors), SenderHealth("", HealthCounts(1, 1, 0))),
            ),
        ),
        0,
    )
    metrics.health_flagged(report)
    flags = "consent_campaign_health_flags_total"
    assert value(metrics, flags, flag="error") == 2  # the campaign and its first number
    assert value(metrics, flags, flag="opt_out") == 1  # the second number: 1 in 1


def _reported(message, result: DeliveryOutcome) -> DeliveryOutcomeReported:
    return DeliveryOutcomeReported(
        event_id=uuid.uuid4(),
        occurred_at=message.occurred_at,
        phone=message.phone,
        brand=message.brand,
        message_id=message.message_id,
        campaign=message.campaign,
        outcome=result,
    )


def test_kafka_producer_renewals_are_counted_per_producer() -> None:
    metrics = ServiceMetrics()
    renewals = "consent_kafka_producer_renewals_total"
    # Shown at 0 before any renewal, so that increase() sees the first one.
    assert value(metrics, renewals, producer="ledger") == 0

    metrics.producer_renewed("ledger")
    metrics.producer_renewed("ledger")
    metrics.producer_renewed("checkpoints")

    assert value(metrics, renewals, producer="ledger") == 2
    assert value(metrics, renewals, producer="checkpoints") == 1
