"""What the service tells Prometheus: its answers, its errors, and how fresh it is.

A fail-closed service can fail quietly: when the projection stalls, every CanSend
answers "not allowed" (``not_consistent``) and nothing else looks wrong. These
metrics make that visible:

* ``consent_cansend_decisions_total{rpc, allowed, reason}``: numbers decided, by
  answer (a batch counts each of its numbers);
* ``consent_rpc_errors_total{rpc, code}``: calls answered with an error status;
* ``consent_projection_lag_events{stream}``: events the ledger held at the last
  freshness observation that the read model had not applied yet;
* ``consent_freshness_observation_age_seconds``: how old that observation is
  (reads fail closed past ``max_observation_age``);
* ``consent_projection_partition_lag_events{stream, partition}``: the same, per
  partition, where a stalled partition shows;
* ``consent_replica_digests`` and ``consent_replica_loads_total``: the in-memory
  replica's size and how often it loaded the whole view;
* ``consent_watch_streams`` and ``consent_watch_changes_total``: open change
  streams (``WatchConsentChanges``) and the changes sent to them;
* ``consent_replica_unreadable_digests``: (brand, phone) entries whose stored
  digest the replica could not read, each answered "no" until rewritten;
* ``consent_replica_age_seconds``: seconds since the replica last confirmed its
  positions against the view (it does at every freshness observation);
* ``grpc_server_started_total``, ``grpc_server_handled_total{grpc_code}`` and
  ``grpc_server_handling_seconds`` (histogram, by ``grpc_code`` too), each by
  ``grpc_service``, ``grpc_method`` and ``grpc_type``: every call of every method
  (``services.grpc_api.interceptors``), go-grpc-prometheus's names;
* ``consent_ledger_append_seconds`` (histogram): how long the ledger took to
  acknowledge an append (``TimedAppends``);
* ``consent_messages_sent_total`` and ``consent_delivery_outcomes_total{outcome}``:
  the ``MessageSent`` and ``DeliveryOutcomeReported`` facts this process appended
  (every write path counted where it appends, ``TimedAppends``): the error rate
  carriers watch, across every brand, as it happens;
* ``consent_import_records_total{outcome}``: records ``ImportConsents`` answered
  (dry runs left out), ``imported``, ``present`` or ``refused``; and
  ``consent_import_refusals_total{record, code, held}``: the refused ones by type
  (``opt_in``, ``opt_out``, ``none``), status code and whether held for review,
  so that opt-outs an import refuses show where the service runs, not only in
  the importer's summary;
* ``consent_campaign_health_flags_total{flag}``: campaigns and sending numbers that
  ``GetCampaignHealth`` answers found above a limit (``opt_out`` or ``error``);
* ``consent_audit_reads_total{action, via}``: audit reads recorded and answered
  (``services.usecases.access``), by call and by what they came through (``grpc``,
  ``console``); ``consent_audit_reads_unrecorded_total{action}``: those refused
  because their record could not be written; ``consent_audit_refusals_total{action,
  via, code}``: audit calls refused before their read (each also in the access log);
* ``consent_projector_failures_total``: times the projector failed and was
  started again (``services.projector.supervise``);
* ``consent_kafka_producer_renewals_total{producer}``: times the Kafka ledger's
  (``ledger``) or the checkpoint store's (``checkpoints``) producer was replaced
  by a new one after a failed delivery (aiokafka issue #1017; a broker restart
  causes a few, a steady climb means deliveries keep failing);
* ``consent_revocation_candidates_unresolved``: flagged replies and opt-outs held
  for review, of every brand, awaiting review (each denies as a revocation); and
  ``consent_revocation_candidates_overdue``: those left unresolved past the ten
  business days the law allows; both read from the view when scraped, one query
  over the unresolved ones;
* the ``process_*``, ``python_gc_*`` and ``python_info`` metrics of
  ``prometheus_client``.

The handlers only add to plain dictionaries on the event loop's thread (a few
dictionary operations per call); everything else is read when Prometheus
scrapes, on the HTTP server's thread: the counters as copies taken in one step,
the guard's status as the loop last swapped it in whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from operator import attrgetter
from typing import Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.events import (
    DeliveryOutcome,
    DeliveryOutcomeReported,
    LedgerEvent,
    MessageSent,
    Recorded,
)
from ledger.health import HealthReport
from ledger.policy import Decision, Reason
from ledger.ports import AccessRecord, EventLog, ReplicaStats, Stream, WrappedEventLog
from services.freshness import FreshnessStatus

log = logging.getLogger(__name__)
T = TypeVar("T")
SCRAPE_READ_TIMEOUT = 2.0
"""Seconds a scrape waits for a value read on the event loop before leaving it out."""
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: CanSend answers from memory in well under a millisecond; a write waits
for the ledger's acknowledgement (milliseconds) and at most its timeout."""
_ALLOWED = attrgetter("allowed")
_REASON = attrgetter("reason")
_REASONS = {id(reason): reason for reason in Reason}
"""Decisions are counted by their reason's id: an enum member hashes in Python code,
an int in C, and a batch counts a thousand of them."""


class Watched(Protocol):
    @property
    def status(self) -> FreshnessStatus: ...


def read_on_loop(
    loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[T]]
) -> Callable[[], T | None]:
    """A function for the scrape's thread that runs ``read`` on ``loop`` and waits for
    it (at most ``SCRAPE_READ_TIMEOUT``): None when it fails or takes longer."""

    async def run() -> T:
        return await read()

    def value() -> T | None:
        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(SCRAPE_READ_TIMEOUT)
        except Exception:
            future.cancel()
            log.warning("a metric could not be read for a scrape", exc_info=True)
            return None

    return value


class ServiceMetrics(Collector):
    """The counters the servicer adds to, and a collector of every metric above.

    ``guard`` and ``replica`` are set once the runtime has built them; until then
    (and in a process without them) their metrics are left out."""

    def __init__(
        self,
        guard: Watched | None = None,
        replica: ReplicaStats | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.replica = replica
        self.candidates: Callable[[], tuple[int, int] | None] | None = None
        """Counts the revocation candidates awaiting review, and the overdue ones among
        them (``read_on_loop``), once set."""
        self._monotonic = monotonic
        self._decisions: dict[tuple[str, bool, int], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._projector_failures = 0
        self.checkpoints_signed = 0
        """Checkpoints of the ledger's chain this process signed and stored."""
        self.checkpointer_failures = 0
        self._producer_renewals = {"ledger": 0, "checkpoints": 0}
        self.watchers = 0
        """Open WatchConsentChanges streams."""
        self.changes_streamed = 0
        """Changes handed to gRPC for watchers (sent, or in the call's send)."""
        self._messages_sent = 0
        self._outcomes = {outcome: 0 for outcome in DeliveryOutcome}
        self._health_flags = {"opt_out": 0, "error": 0}
        self._import_records = {"imported": 0, "present": 0, "refused": 0}
        self._import_refusals: dict[tuple[str, str, bool], int] = {}
        self._audit_reads: dict[tuple[str, str], int] = {}
        self._audit_unrecorded: dict[str, int] = {}
        self._audit_refused: dict[tuple[str, str, str], int] = {}
        self.tokens_file_unreadable = False
        """Whether the tokens file as it stands cannot be used, so the tokens of an
        earlier read (a token since revoked among them) are still in use."""
        self.tokens_loaded_at: float | None = None
        """Unix time the tokens in use were read from the file (None: no file)."""
        # prometheus_client's own types for what needs buckets; not registered
        # anywhere (collect yields them), so each ServiceMetrics has its own.
        rpc = ["grpc_service", "grpc_method", "grpc_type"]
        self._rpc_started = CounterMetric(
            "grpc_server_started", "gRPC calls started.", rpc, registry=None
        )
        self._rpc_handled = CounterMetric(
            "grpc_server_handled",
            "gRPC calls finished, by status code.",
            [*rpc, "grpc_code"],
            registry=None,
        )
        self._rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Seconds from a gRPC call's start to its end, by status code.",
            [*rpc, "grpc_code"],
            registry=None,
            buckets=RPC_BUCKETS,
        )
        self._append_seconds = Histogram(
            "consent_ledger_append_seconds",
            "Seconds the ledger took to acknowledge an append (or refuse it).",
            ["outcome"],
            registry=None,
            buckets=RPC_BUCKETS,
        )

    def rpc_started(self, service: str, method: str, grpc_type: str) -> None:
        self._rpc_started.labels(service, method, grpc_type).inc()

    def rpc_handled(
        self, service: str, method: str, grpc_type: str, code: str, seconds: float
    ) -> None:
        self._rpc_handled.labels(service, method, grpc_type, code).inc()
        self._rpc_seconds.labels(service, method, grpc_type, code).observe(seconds)

    def appended(self, outcome: str, seconds: float) -> None:
        self._append_seconds.labels(outcome).observe(seconds)

    def decided(self, rpc: str, decision: Decision) -> None:
        key = (rpc, decision.allowed, id(decision.reason))
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def decided_all(self, rpc: str, decisions: Sequence[Decision]) -> None:
        # One pass in C over the batch, then a few updates.
        counts = self._decisions
        reasons = map(id, map(_REASON, decisions))
        answers = Counter(zip(map(_ALLOWED, decisions), reasons, strict=True))
        for (allowed, reason), n in answers.items():
            key = (rpc, allowed, reason)
            counts[key] = counts.get(key, 0) + n

    def failed(self, rpc: str, code: str) -> None:
        key = (rpc, code)
        self._errors[key] = self._errors.get(key, 0) + 1

    def appended_facts(self, events: Sequence[LedgerEvent]) -> None:
        """Count the sends and delivery outcomes among ``events``, just appended."""
        for event in events:
            if isinstance(event, MessageSent):
                self._messages_sent += 1
            elif isinstance(event, DeliveryOutcomeReported):
                self._outcomes[event.outcome] += 1

    def health_flagged(self, report: HealthReport) -> None:
        """Count the campaigns and sending numbers ``report`` flags."""
        limits = report.limits
        for campaign in report.campaigns:
            for counts in (campaign.counts, *(s.counts for s in campaign.senders)):
                self._health_flags["opt_out"] += counts.opt_out_flagged(limits)
                self._health_flags["error"] += counts.error_flagged(limits)

    def imported(
        self, imported: int, present: int, refusals: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Count an import's answered chunk: its records imported and present, and each
        refusal as (record type, status code, held for review)."""
        self._import_records["imported"] += imported
        self._import_records["present"] += present
        self._import_records["refused"] += len(refusals)
        for key in refusals:
            self._import_refusals[key] = self._import_refusals.get(key, 0) + 1

    def audit_read(self, record: AccessRecord, written: bool) -> None:
        """Count an audit read: recorded (and so answered), or refused unrecorded."""
        if written:
            key = (record.action, record.via)
            self._audit_reads[key] = self._audit_reads.get(key, 0) + 1
        else:
            self._audit_unrecorded[record.action] = self._audit_unrecorded.get(record.action, 0) + 1

    def audit_refused(self, record: AccessRecord) -> None:
        """Count an audit call refused before its read, by call, channel and code."""
        key = (record.action, record.via, record.refusal_code or "")
        self._audit_refused[key] = self._audit_refused.get(key, 0) + 1

    def projector_failed(self) -> None:
        self._projector_failures += 1

    def checkpointer_failed(self) -> None:
        self.checkpointer_failures += 1

    def producer_renewed(self, producer: str) -> None:
        """Count a Kafka producer (``ledger`` or ``checkpoints``) replaced after a
        failed delivery."""
        self._producer_renewals[producer] += 1

    def registry(self) -> CollectorRegistry:
        """A registry with these metrics and the process's own."""
        registry = CollectorRegistry()
        registry.register(self)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        return registry

    def collect(self) -> Iterator[Metric]:
        yield from self._rpc_started.collect()
        yield from self._rpc_handled.collect()
        yield from self._rpc_seconds.collect()
        yield from self._append_seconds.collect()
        decisions = CounterMetricFamily(
            "consent_cansend_decisions",
            "Numbers decided by CanSend and CanSendBatch, by answer.",
            labels=["rpc", "allowed", "reason"],
        )
        for (rpc, allowed, reason), n in self._decisions.copy().items():
            decisions.add_metric([rpc, str(allowed).lower(), _REASONS[reason].value], n)
        yield decisions
        errors = CounterMetricFamily(
            "consent_rpc_errors",
            "Calls answered with an error status, by method and gRPC status code.",
            labels=["rpc", "code"],
        )
        for (rpc, code), n in self._errors.copy().items():
            errors.add_metric([rpc, code], n)
        yield errors
        yield GaugeMetricFamily(
            "consent_watch_streams", "Open WatchConsentChanges streams.", value=self.watchers
        )
        yield CounterMetricFamily(
            "consent_watch_changes",
            "Changes sent to WatchConsentChanges streams.",
            value=self.changes_streamed,
        )
        yield CounterMetricFamily(
            "consent_messages_sent",
            "MessageSent facts this process appended (every brand's sends).",
            value=self._messages_sent,
        )
        outcomes = CounterMetricFamily(
            "consent_delivery_outcomes",
            "DeliveryOutcomeReported facts this process appended, by outcome.",
            labels=["outcome"],
        )
        for outcome, n in self._outcomes.copy().items():
            outcomes.add_metric([outcome.value], n)
        yield outcomes
        flags = CounterMetricFamily(
            "consent_campaign_health_flags",
            "Campaigns and sending numbers that GetCampaignHealth answers flagged, by "
            "the rate above its limit.",
            labels=["flag"],
        )
        for flag, n in self._health_flags.copy().items():
            flags.add_metric([flag], n)
        yield flags
        records = CounterMetricFamily(
            "consent_import_records",
            "Records ImportConsents answered (dry runs left out): imported, present or refused.",
            labels=["outcome"],
        )
        for answered, n in self._import_records.copy().items():
            records.add_metric([answered], n)
        yield records
        import_refusals = CounterMetricFamily(
            "consent_import_refusals",
            "Records ImportConsents refused, by record type, status code and whether the "
            "record (an opt-out) was held for review all the same.",
            labels=["record", "code", "held"],
        )
        for (kind, code, held), n in self._import_refusals.copy().items():
            import_refusals.add_metric([kind, code, str(held).lower()], n)
        yield import_refusals
        reads = CounterMetricFamily(
            "consent_audit_reads",
            "Audit reads recorded in the access log and answered, by call and channel.",
            labels=["action", "via"],
        )
        for (action, via), n in self._audit_reads.copy().items():
            reads.add_metric([action, via], n)
        yield reads
        unrecorded = CounterMetricFamily(
            "consent_audit_reads_unrecorded",
            "Audit reads refused (UNAVAILABLE) because the access log could not record them.",
            labels=["action"],
        )
        for action, n in self._audit_unrecorded.copy().items():
            unrecorded.add_metric([action], n)
        yield unrecorded
        refused = CounterMetricFamily(
            "consent_audit_refusals",
            "Audit calls refused before their read (another brand, no audit scope, bad "
            "input), by call, channel and status code.",
            labels=["action", "via", "code"],
        )
        for (action, via, code), n in self._audit_refused.copy().items():
            refused.add_metric([action, via, code], n)
        yield refused
        yield CounterMetricFamily(
            "consent_projector_failures",
            "Times the projector failed and was started again; the log has each cause.",
            value=self._projector_failures,
        )
        yield CounterMetricFamily(
            "consent_checkpoints_signed",
            "Checkpoints of the ledger's hash chain this process signed and stored.",
            value=self.checkpoints_signed,
        )
        yield CounterMetricFamily(
            "consent_checkpointer_failures",
            "Times the checkpoint writer failed and was started again; the log has each cause.",
            value=self.checkpointer_failures,
        )
        renewals = CounterMetricFamily(
            "consent_kafka_producer_renewals",
            "Times a Kafka producer was replaced by a new one after a failed delivery, by "
            "producer (ledger, checkpoints); the log has each.",
            labels=["producer"],
        )
        for producer, n in self._producer_renewals.copy().items():
            renewals.add_metric([producer], n)
        yield renewals
        if self.tokens_loaded_at is not None:
            yield GaugeMetricFamily(
                "consent_tokens_file_unreadable",
                "1 while the tokens file as it stands cannot be used: the tokens of the "
                "last good read stay in use, a token revoked since among them.",
                value=int(self.tokens_file_unreadable),
            )
            yield GaugeMetricFamily(
                "consent_tokens_file_loaded_timestamp_seconds",
                "Unix time the tokens in use were read from the tokens file.",
                value=self.tokens_loaded_at,
            )
        if self.guard is not None:
            status = self.guard.status
            lag = GaugeMetricFamily(
                "consent_projection_lag_events",
                "Events the ledger held at the last freshness observation that the "
                "read model had not applied.",
                labels=["stream"],
            )
            for stream in Stream:
                lag.add_metric([stream.value], status.lag.get(stream, 0))
            yield lag
            partitions = GaugeMetricFamily(
                "consent_projection_partition_lag_events",
                "Per partition: events the ledger held at the last freshness observation "
                "that the read model had not applied.",
                labels=["stream", "partition"],
            )
            for stream, lags in status.partition_lag.items():
                for partition, n in sorted(lags.items()):
                    partitions.add_metric([stream.value, str(partition)], n)
            yield partitions
            yield GaugeMetricFamily(
                "consent_freshness_observation_age_seconds",
                "Seconds since the last freshness observation; reads fail closed when "
                "it is older than the configured maximum.",
                value=self._monotonic() - status.observed_at,
            )
        candidates = None if self.candidates is None else self.candidates()
        if candidates is not None:
            unresolved, overdue = candidates
            yield GaugeMetricFamily(
                "consent_revocation_candidates_unresolved",
                "Replies flagged as possible opt-outs and opt-outs held for review, of every "
                "brand, awaiting review; each denies as a revocation until resolved.",
                value=unresolved,
            )
            yield GaugeMetricFamily(
                "consent_revocation_candidates_overdue",
                "Replies flagged as possible opt-outs, of every brand, left unresolved past "
                "the ten business days of 47 CFR 64.1200(a)(10); each denies as a revocation.",
                value=overdue,
            )
        if self.replica is not None:
            yield GaugeMetricFamily(
                "consent_replica_digests",
                "Digests held by the in-memory replica that CanSend reads.",
                value=self.replica.size,
            )
            yield CounterMetricFamily(
                "consent_replica_loads",
                "Times the replica loaded the whole read model (at start and after a rebuild).",
                value=self.replica.loads,
            )
            yield GaugeMetricFamily(
                "consent_replica_unreadable_digests",
                "Entries of the read model whose stored digest the replica could not read; "
                "CanSend answers each of those numbers not allowed (internal_error).",
                value=self.replica.unreadable,
            )
            yield GaugeMetricFamily(
                "consent_replica_age_seconds",
                "Seconds since the replica last confirmed its positions against the read "
                "model (+Inf before its first load).",
                value=self._monotonic() - self.replica.confirmed_at,
            )


class TimedAppends(WrappedEventLog):
    """A ledger whose appends are timed into ``consent_ledger_append_seconds`` (and
    whose sends and delivery outcomes are counted); every other method is the
    wrapped ledger's."""

    def __init__(self, ledger: EventLog, metrics: ServiceMetrics) -> None:
        super().__init__(ledger)
        self._metrics = metrics

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        started, outcome = time.perf_counter(), "error"
        try:
            recorded = await self._ledger.append(events)
            outcome = "ok"
            self._metrics.appended_facts(events)
            return recorded
        finally:
            self._metrics.appended(outcome, time.perf_counter() - started)
