"""The use cases, by purpose: ``writes`` records facts (``sends``, many messages sent
at once), ``checks`` answers CanSend,
``audit`` reads what is on record, ``review`` lists the replies awaiting review;
``imports`` records another platform's export (``UseCases.start_import``); ``erasure``
erases a subject's personal data after the retention period, and places legal holds.

Entry points (gRPC, CLI) build a request from their input and call one of them;
they know the ports (``ledger.ports``), never a technology. ``UseCases.build`` makes
all of them on one ``Context``; ``services.bootstrap`` is the one place that does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from ledger.commands import OPT_OUT_ERROR_CODES
from ledger.health import HealthLimits
from ledger.ports import AccessLog, CampaignReads, ConsentView, DigestReads, EventLog, SubjectKeys
from ledger.retention import Retention
from services.adapters.memory_access import InMemoryAccessLog
from services.freshness import FreshnessGuard
from services.personal_data import PersonalData, SealingEventLog
from services.usecases.access import Access
from services.usecases.audit import Audit, Evidence
from services.usecases.checks import DEFAULT_FUTURE_HORIZON, Checks
from services.usecases.context import Clock, Context, utc_now
from services.usecases.erasure import Erasure
from services.usecases.imports import APPEND_LEASE_S, PRUNE_INTERVAL_S, Imports, TurnPruning
from services.usecases.requests import Turns
from services.usecases.review import Review
from services.usecases.sends import Sends
from services.usecases.writes import Writes

DEFAULT_RETENTION = Retention()


@dataclass(frozen=True)
class UseCases:
    writes: Writes
    checks: Checks
    audit: Audit
    review: Review
    access: Access
    sends: Sends
    erasure: Erasure
    turn_pruning: TurnPruning = field(default_factory=TurnPruning)
    """When the process's imports last pruned the old append turns."""
    append_lease: float = APPEND_LEASE_S
    """How long each import's turn to append a record lasts (``Imports``' ``lease_s``)."""

    @classmethod
    def build(
        cls,
        ledger: EventLog,
        view: ConsentView,
        guard: FreshnessGuard,
        clock: Clock = utc_now,
        *,
        reads: DigestReads | None = None,
        campaigns: CampaignReads | None = None,
        future_horizon: timedelta = DEFAULT_FUTURE_HORIZON,
        evidence: Evidence | None = None,
        health_limits: HealthLimits | None = None,
        access_log: AccessLog | None = None,
        keys: SubjectKeys | None = None,
        retention: Retention = DEFAULT_RETENTION,
        import_prune_interval: float = PRUNE_INTERVAL_S,
        import_append_lease: float = APPEND_LEASE_S,
        opt_out_error_codes: frozenset[str] = OPT_OUT_ERROR_CODES,
    ) -> UseCases:
        """``reads`` answers CanSend's digests and ``campaigns`` the campaigns' rules
        (each by default the view);
        ``future_horizon`` is how far ahead a check may ask; ``evidence`` proves a
        proof packet's events against the signed checkpoints; ``health_limits`` the rates
        campaign health flags; ``access_log`` records every audit read
        (``services.bootstrap`` gives the durable one; by default they are kept in
        memory, for tests); ``keys`` seal each subject's personal data (None: it is
        written in the clear) and ``retention`` says when it may be erased;
        ``import_prune_interval`` is how often imports prune old append turns at most,
        and ``import_append_lease`` how long each of their turns to append lasts;
        ``opt_out_error_codes`` the delivery outcomes' error codes that hold the number
        for review (the recipient opted out at the provider)."""
        access = Access(InMemoryAccessLog() if access_log is None else access_log, clock)
        personal = PersonalData(keys) if keys is not None else None
        if personal is not None:
            ledger = SealingEventLog(ledger, personal)
        ctx = Context(
            ledger, view, guard, clock, access=access, personal=personal, campaigns=campaigns
        )
        checks = Checks(ctx, reads, future_horizon, campaigns)
        # An erasure and a hold placed on a text read again take turns per subject.
        subjects: Turns[tuple[str, str]] = Turns()
        return cls(
            Writes(ctx, reads, opt_out_error_codes),
            checks,
            Audit(ctx, evidence, health_limits),
            Review(ctx, subjects),
            access,
            Sends(ctx),
            Erasure(ctx, keys, retention, subjects),
            TurnPruning(import_prune_interval),
            import_append_lease,
        )

    def start_import(
        self,
        *,
        authorize: Callable[[str], None] = lambda brand: None,
        own_brands: Callable[[], Sequence[str]] = lambda: (),
        recorded_by: str = "",
        time_left: Callable[[], float | None] = lambda: None,
    ) -> Imports:
        """A bulk import's use case (``services.usecases.imports``), for one import;
        ``time_left``: the seconds to the caller's deadline (None: none)."""
        return Imports(
            self.writes.ctx,
            authorize=authorize,
            own_brands=own_brands,
            recorded_by=recorded_by,
            lease_s=self.append_lease,
            pruning=self.turn_pruning,
            time_left=time_left,
            covered=self.writes.resolve_holds_covered_by,
        )
