"""An oracle for consent by the records' own times, held to the service through gRPC.

The other randomized checks compare the service's readers with each other, so a rule
every reader gets wrong alike passes them. ``Model`` below is written from the README
alone ("The policy" 1-3, "The ledger" on world order, "Importing from another platform",
"The moment asked about"), for a regular message of two informational campaigns, where
quiet hours, caps and age gates never bite, and a promotional one, which needs a
promotional opt-in given in writing (a verbal or ``api_import`` one, or an informational
one, reaches informational campaigns only; a START resumes the last grant, of its tier)
and outside its hours is only denied: opt-ins, opt-outs (one campaign or the brand),
STOP / STOPALL / START texts, imports, the holds a refused opt-out leaves and the FCC's
revoke-all rule (from its date, from a brand's SetBrandPolicy, or a campaign's own
``revoke_all``) decide. Seeded random histories, each fact with a time of its own (past,
far past, tied, out of the order they are recorded in; some a client's mistake, ahead or
before 2000), go in through the API, and after every write ``CanSend``, ``CanSendBatch``
and ``CanSendAsOf`` (``known_at`` now) must answer as the model does, allowed or not and
for the same kind of reason. The last seeds erase a number six years on, its retention
period over: from then no earlier grant allows, only a fresh opt-in after it
("Retention, erasure and legal holds"). A second test runs such histories on the real
clock, some facts dated seconds before they are written, and asks ``CanSendAsOf`` of
moments between writes with a ``known_at`` between writes (what the ledger had recorded
by then, each fact counting either way) and without one (in hindsight: what was recorded
more than the clock skew after the moment counts only against it).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    held_info,
    imported,
    inbound,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    precondition_violations,
    serving,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAMPAIGNS = ("alerts", "notices", "updates")
# A promotional campaign: it needs prior express written consent ("The policy", 3),
# and quiet hours bite it (federal 8 am to 9 pm; every number here is Californian).
PROMOTIONAL = frozenset({"updates"})
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
PURPOSE = {False: lpb.CAMPAIGN_PURPOSE_INFORMATIONAL, True: lpb.CAMPAIGN_PURPOSE_PROMOTIONAL}
# Each brand's campaigns and the number each sends from; globex takes the revoke-all
# rule up early (SetBrandPolicy) halfway through its histories.
SENDERS = {
    "acme": dict(zip(CAMPAIGNS, ("+12125550141", "+12125550142", "+12125550143"), strict=True)),
    "globex": dict(zip(CAMPAIGNS, ("+12125550151", "+12125550152", "+12125550153"), strict=True)),
    "initech": dict(zip(CAMPAIGNS, ("+12125550161", "+12125550162", "+12125550163"), strict=True)),
}
# Campaigns that honour the revoke-all rule early, by their own rules.
REVOKE_ALL_CAMPAIGNS = {"initech": frozenset({"alerts"})}
# The FCC's revoke-all rule: midnight in Washington, D.C. on 2027-01-31 (README, "Revoke-all").
REVOKE_ALL = datetime(2027, 1, 31, 5, 0, tzinfo=UTC)
# After the rule: noon in Los Angeles a fortnight past it.
AFTER_RULE = datetime(2027, 2, 14, 20, 0, tzinfo=UTC)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # no fact's time is before it
SKEW = timedelta(minutes=5)  # the clock skew the service allows a write's time

ALLOW, HOLD, STOPPED = "allowed", "held for review", "no consent"
QUIET = "quiet hours"  # any denial will do: the model leaves the order of the rules open
UNKNOWN = "campaign not defined then"
FAMILY = {
    api.REASON_CAMPAIGN_UNKNOWN: UNKNOWN,
    api.REASON_CONSENT_ACTIVE: ALLOW,
    api.REASON_REVOCATION_PENDING_REVIEW: HOLD,
    api.REASON_REVOCATION_OVERDUE: HOLD,
    api.REASON_NO_CONSENT: STOPPED,
    # A text with no opt-in before it is conversational consent, never a regular send's.
    api.REASON_CONSENT_TIER_INSUFFICIENT: STOPPED,
    api.REASON_REVOKED: STOPPED,
    api.REASON_REVOKED_BRAND_WIDE: STOPPED,
    api.REASON_SUBJECT_ERASED: STOPPED,
}


# ---------------------------------------------------------------- the model


@dataclass
class Fact:
    kind: str  # "grant", "revoke" or "resume"
    at: datetime
    campaign: str | None  # None: every campaign of the brand
    seq: int  # ledger order
    rec: datetime | None = None  # when the ledger recorded it (``Model.stamp``)
    written: bool = True  # a grant of the promotional tier given in writing


@dataclass
class Hold:
    at: datetime
    # By a later opt-out of the brand's reach: a live hold by any, an import's by an
    # imported one alone ("A STOP is never lost").
    imported: bool
    seq: int
    resolved_at: datetime | None = None
    rec: datetime | None = None
    resolved_rec: datetime | None = None


@dataclass
class Number:
    facts: list[Fact] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    erased: datetime | None = None  # RequestErasure's time
    erased_rec: datetime | None = None


class Model:
    """Consent of one brand's numbers for a regular message, from the README alone."""

    def __init__(
        self, brand: str, defined_at: datetime, revoke_all_since: datetime | None = None
    ) -> None:
        self.brand, self.senders = brand, SENDERS[brand]
        self.defined_at = defined_at
        self.defined_rec = EARLIEST  # when the ledger recorded the campaigns
        self.revoke_all_since = revoke_all_since  # the brand's SetBrandPolicy
        self.revoke_all_campaigns = REVOKE_ALL_CAMPAIGNS.get(brand, frozenset())
        self.numbers: dict[str, Number] = {}
        self.seq = 0

    def _n(self, phone: str) -> Number:
        return self.numbers.setdefault(phone, Number())

    def fact(
        self, phone: str, kind: str, at: datetime, campaign: str | None, written: bool = True
    ) -> None:
        self.seq += 1
        self._n(phone).facts.append(Fact(kind, at, campaign, self.seq, written=written))

    def hold(self, phone: str, at: datetime, *, imported: bool = False) -> None:
        self.seq += 1
        self._n(phone).holds.append(Hold(at, imported, self.seq))

    def stamp(self, rec: datetime) -> None:
        """Give what was written since the last stamp the time the ledger recorded it:
        any moment after the write's acknowledgement and before the next write."""
        for n in self.numbers.values():
            for f in n.facts:
                f.rec = rec if f.rec is None else f.rec
            if n.erased is not None and n.erased_rec is None:
                n.erased_rec = rec
            for h in n.holds:
                h.rec = rec if h.rec is None else h.rec
                if h.resolved_at is not None and h.resolved_rec is None:
                    h.resolved_rec = rec

    def revokes_all(self, at: datetime) -> bool:
        """Whether the revoke-all rule is in force at ``at``: from the FCC's date, or
        from when the brand took it up."""
        since = self.revoke_all_since
        return at >= REVOKE_ALL or (since is not None and at >= since)

    def reads_as_all(self, asked: str) -> bool:
        """Whether ``asked`` honours the rule early by its own ``revoke_all``: it reads
        an opt-out of any campaign of the brand as its own ("the opt-outs it read as
        the campaign's own ended its consent"), while one of it alone ends no other."""
        return asked in self.revoke_all_campaigns

    def opt_out_of_reach(self, phone: str, now: datetime, *, imported: bool = False) -> None:
        """An opt-out of every campaign (or of one under the revoke-all rule) resolves
        the holds recorded before it that it can (an import's only when ``imported``):
        "revoked", with a brand-wide revocation at that moment ("A STOP is never
        lost")."""
        pending = [
            h
            for h in self._n(phone).holds
            if (imported or not h.imported) and h.resolved_at is None and h.seq < self.seq
        ]
        for h in pending:
            h.resolved_at = now
        if pending:
            self.fact(phone, "revoke", now, None)

    def decide(
        self, phone: str, campaign: str, at: datetime, known: datetime | None = None
    ) -> tuple[str, int]:
        """The answer for ``at`` from every fact known now, or (``known``) from those
        the ledger had recorded by then ("The moment asked about": with ``known_at``,
        each counting either way)."""
        if at < self.defined_at or (known is not None and known < self.defined_rec):
            return UNKNOWN, api.REASON_CAMPAIGN_UNKNOWN
        if campaign in PROMOTIONAL and not 8 <= at.astimezone(LOS_ANGELES).hour < 21:
            return QUIET, api.REASON_QUIET_HOURS

        def by_then(rec: datetime | None) -> bool:
            return known is None or (rec is not None and rec <= known)

        n = self._n(phone)
        for h in n.holds:
            resolved = h.resolved_at is not None and by_then(h.resolved_rec)
            if by_then(h.rec) and h.at <= at and not (resolved and h.resolved_at <= at):
                return HOLD, api.REASON_REVOCATION_PENDING_REVIEW
        revoke_all = self.revokes_all(at)
        # After an erasure no earlier fact allows a send, only a fresh opt-in after
        # it ("Retention, erasure and legal holds"); before it, what stood then.
        erased = n.erased if n.erased is not None and n.erased <= at else None
        if erased is not None and not by_then(n.erased_rec):
            erased = None
        mine = [
            f
            for f in n.facts
            if f.at <= at
            and by_then(f.rec)
            and not (erased is not None and f.kind == "grant" and f.at <= erased)
            and (
                f.campaign in (campaign, None)
                or (f.kind == "revoke" and (revoke_all or self.reads_as_all(campaign)))
            )
        ]
        if not mine:
            return STOPPED, api.REASON_NO_CONSENT
        # World order; at the same instant a revocation wins, then ledger order.
        last = max(mine, key=lambda f: (f.at, f.kind == "revoke", f.seq))
        if last.kind == "revoke":
            own = last.campaign == campaign
            return STOPPED, api.REASON_REVOKED if own else api.REASON_REVOKED_BRAND_WIDE
        if last.kind == "grant":
            return self.tier(last, campaign)
        # A START resumes only a consent the campaign was given before it: the last
        # one given, of its tier.
        before = (last.at, False, last.seq)
        given = [
            f
            for f in mine
            if f.kind == "grant" and f.campaign == campaign and (f.at, False, f.seq) < before
        ]
        if given:
            return self.tier(max(given, key=lambda f: (f.at, f.seq)), campaign)
        return STOPPED, api.REASON_NO_CONSENT

    @staticmethod
    def tier(grant: Fact, campaign: str) -> tuple[str, int]:
        """Informational consent, or a promotional one not given in writing, never
        allows a promotional campaign ("The policy", 3)."""
        if campaign in PROMOTIONAL and not grant.written:
            return STOPPED, api.REASON_CONSENT_TIER_INSUFFICIENT
        return ALLOW, api.REASON_CONSENT_ACTIVE

    def in_hindsight(self, phone: str, campaign: str, at: datetime) -> tuple[str, int]:
        """``CanSendAsOf`` without ``known_at``: every fact known now, but one recorded
        more than the clock skew after ``at`` counts against the moment, never for it,
        so it allows only when what was recorded by then allows too, and on that
        answer's grounds when the two differ."""
        now = self.decide(phone, campaign, at)
        then = self.decide(phone, campaign, at, known=at + SKEW)
        return then if now[0] == ALLOW and then[0] != ALLOW else now


# ---------------------------------------------------------------- the histories


@dataclass
class Step:
    what: str
    phone: str
    campaign: str | None
    at: datetime
    back: float | None = None  # dated this many seconds before it is written
    erase: bool = False  # the number's data erased, the retention period over, first


def history(
    rng: random.Random, phones: list[str], base: datetime, facts: int, recent: float = 0.0
) -> list[Step]:
    """``facts`` steps; a share ``recent`` of the ones dated in the past are dated a
    few seconds before they are written instead, between the writes before them."""
    kinds = [
        ("opt_in", 14),
        ("opt_in_informational", 3),
        ("opt_in_verbal", 3),
        ("import_opt_in_unwritten", 3),
        ("opt_out", 10),
        ("opt_out_brand", 4),
        ("stop", 9),
        ("stopall", 4),
        ("start", 12),
        ("import_opt_in", 9),
        ("import_opt_out", 6),
        ("import_opt_out_brand", 3),
        ("opt_out_ahead", 3),
        ("opt_out_before_2000", 2),
        ("stop_ahead", 2),
        ("import_opt_out_ahead", 2),
        ("opt_in_ahead", 2),
        ("opt_in_before_2000", 1),
        ("reconfirm", 6),
    ]
    names, weights = zip(*kinds, strict=True)
    times: list[datetime] = []
    steps = []
    for _ in range(facts):
        what = rng.choices(names, weights)[0]
        r = rng.random()
        if times and r < 0.2:
            at = rng.choice(times)  # a tie with a fact already written
        elif r < 0.25:
            at = datetime(2003, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(3000))
        else:
            at = base - timedelta(seconds=rng.randrange(60, 30 * 86400))
        at = at.replace(microsecond=0)
        if what.endswith("_ahead"):
            at = base + timedelta(days=2)
        elif what.endswith("_before_2000"):
            at = datetime(1999, 6, 1, 12, tzinfo=UTC)
        else:
            times.append(at)
        brand_wide = what in ("opt_out_brand", "stopall", "import_opt_out_brand")
        campaign = None if brand_wide else rng.choice(CAMPAIGNS)
        back = None
        if not what.endswith(("_ahead", "_before_2000")) and rng.random() < recent:
            back = rng.uniform(0.0, 3.0)
        steps.append(Step(what, rng.choice(phones), campaign, at, back))
    return steps


def erased_since(model: Model, phone: str, at: datetime) -> bool:
    """Whether ``phone``'s data was erased at or after ``at``: a record dated then is
    neither imported nor recorded again ("Retention, erasure and legal holds")."""
    erased = model._n(phone).erased
    return erased is not None and at <= erased


def refused_as_erased(done: api.ImportConsentsResponse) -> str:
    """An import's answer refusing its one record as dated before its number's
    erasure, nothing written and nothing held: no token to wait for."""
    assert (done.imported, done.held_for_review) == (0, 0), done
    assert [(r.code, r.violations[0].field) for r in done.refusals] == [
        ("FAILED_PRECONDITION", "occurred_at")
    ], done
    return ""


async def refused_write_as_erased(write: Awaitable[Any]) -> str:
    """A single write refused as dated at or before its number's erasure, as an
    imported record is: nothing written, nothing held, no token to wait for."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await write
    err = refused.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert [f for f, _ in precondition_violations(err)] == ["occurred_at"], err
    assert held_info(err) is None, err
    return ""


async def apply(c: Client, model: Model, step: Step, now: datetime) -> str:
    """Write ``step`` through the API and into the model; the consistency token."""
    what, phone, campaign, at = step.what, step.phone, step.campaign, step.at
    # An opt-out of one campaign dated when the revoke-all rule is in force for it
    # (the FCC's date, the brand's setting, or the campaign's own rules, which exist
    # only from their definition on) resolves holds as an opt-out of the brand does.
    early = campaign in model.revoke_all_campaigns and at >= model.defined_at
    reach_all = model.revokes_all(at) or early
    brand = model.brand
    if what in ("opt_in_informational", "opt_in_verbal"):
        assert campaign
        request = opt_in(phone, brand, campaign, at)
        if what == "opt_in_informational":
            request.tier = lpb.CONSENT_TIER_INFORMATIONAL
        else:
            request.method = lpb.COLLECTION_METHOD_VERBAL
            request.proof.collection_detail = "agreed on a call with the front desk"
        if erased_since(model, phone, at):
            return await refused_write_as_erased(c.RecordOptIn(request))
        w = await c.RecordOptIn(request)
        # Neither is a promotional opt-in given in writing.
        assert w.informational_only == (what == "opt_in_verbal"), w
        model.fact(phone, "grant", at, campaign, written=False)
        return w.consistency_token
    if what in ("opt_in", "opt_in_ahead", "opt_in_before_2000"):
        assert campaign
        if what == "opt_in" and erased_since(model, phone, at):
            return await refused_write_as_erased(c.RecordOptIn(opt_in(phone, brand, campaign, at)))
        try:
            w = await c.RecordOptIn(opt_in(phone, brand, campaign, at))
        except grpc.aio.AioRpcError as err:
            # Ahead of the skew, or before 2000: refused, nothing written.
            assert what != "opt_in" and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            return ""
        assert what == "opt_in", f"{what} accepted"
        assert not w.informational_only, w
        model.fact(phone, "grant", at, campaign)
        return w.consistency_token
    if what == "import_opt_in_unwritten":
        assert campaign
        record = opt_in(phone, brand, campaign, at, method=lpb.COLLECTION_METHOD_API_IMPORT)
        record.proof.collection_detail = "exported by the platform it came from"
        done = await imported(c, api.ImportRecord(opt_in=record))
        if erased_since(model, phone, at):
            return refused_as_erased(done)
        assert (done.imported, done.informational_only) == (1, 1), done
        model.fact(phone, "grant", at, campaign, written=False)
        return done.consistency_token
    if what in ("opt_out", "opt_out_brand", "opt_out_ahead", "opt_out_before_2000"):
        if what in ("opt_out", "opt_out_brand") and erased_since(model, phone, at):
            return await refused_write_as_erased(
                c.RecordOptOut(opt_out(phone, brand, campaign, at))
            )
        try:
            w = await c.RecordOptOut(opt_out(phone, brand, campaign, at))
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert what != "opt_out" and what != "opt_out_brand" and info, err
            # Held at the opt-out's own time when that reads as one (from 2000 on)
            # and is not ahead of the service's clock, else when it was refused.
            model.hold(phone, at if EARLIEST <= at <= now else now)
            return info["consistency_token"]
        assert what in ("opt_out", "opt_out_brand"), f"{what} accepted"
        model.fact(phone, "revoke", at, campaign)
        if campaign is None or reach_all:
            model.opt_out_of_reach(phone, now)
        return w.consistency_token
    if what in ("stop", "stopall", "start", "stop_ahead"):
        to = model.senders[campaign or CAMPAIGNS[0]]
        body = {"stop": "STOP", "stop_ahead": "STOP", "stopall": "STOPALL", "start": "START"}
        if what != "stop_ahead" and erased_since(model, phone, at):
            text = inbound(phone, to, body[what], at)
            return await refused_write_as_erased(c.HandleInboundMessage(text))
        try:
            w = await c.HandleInboundMessage(inbound(phone, to, body[what], at))
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert what == "stop_ahead" and info, err
            model.hold(phone, now)
            return info["consistency_token"]
        assert what != "stop_ahead", "a STOP two days ahead accepted"
        if what == "start":
            model.fact(phone, "resume", at, campaign)
        else:
            model.fact(phone, "revoke", at, None if what == "stopall" else campaign)
            if what == "stopall" or reach_all:
                model.opt_out_of_reach(phone, now)
        return w.consistency_token
    if what == "reconfirm":
        # A reconfirmation confirms a consent standing; it gives none, and lifts no
        # opt-out ("The policy", 3 and 7), so the model records nothing of it.
        assert campaign
        request = api.RecordReconfirmationRequest(
            request_id=uuid.uuid4().hex, phone=phone, brand=brand, campaign=campaign,
            channel=lpb.REVOCATION_CHANNEL_API, occurred_at=ts(at),
        )  # fmt: skip
        try:
            w = await c.RecordReconfirmation(request)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
            return ""
        return w.consistency_token
    if what == "import_opt_in":
        assert campaign
        done = await imported(c, api.ImportRecord(opt_in=opt_in(phone, brand, campaign, at)))
        if erased_since(model, phone, at):
            return refused_as_erased(done)
        assert done.imported == 1, done
        model.fact(phone, "grant", at, campaign)
        return done.consistency_token
    assert what.startswith("import_opt_out"), what
    done = await imported(c, api.ImportRecord(opt_out=opt_out(phone, brand, campaign, at)))
    if erased_since(model, phone, at):
        return refused_as_erased(done)
    if what == "import_opt_out_ahead":
        assert (done.imported, done.held_for_review) == (0, 1), done
        model.hold(phone, now, imported=True)
    else:
        assert done.imported == 1, done
        model.fact(phone, "revoke", at, campaign)
        if campaign is None or reach_all:
            model.opt_out_of_reach(phone, now, imported=True)
    return done.consistency_token


# ---------------------------------------------------------------- the comparison


@dataclass
class Tally:
    checks: int = 0
    disagreements: list[str] = field(default_factory=list)
    reasons_differ: list[str] = field(default_factory=list)
    writes: Counter[str] = field(default_factory=Counter)

    def assert_agreed(self, what: str) -> None:
        """Print what was compared (``what``) and every reason that differed; fail
        with the disagreements."""
        print(f"\n{what}, {self.checks} answers compared")
        print("writes:", ", ".join(f"{k} {v}" for k, v in sorted(self.writes.items())))
        for line in self.reasons_differ[:20]:
            print("reason differs:", line)
        assert not self.disagreements, "\n".join(self.disagreements[:30]) + (
            f"\n... {len(self.disagreements)} in all"
        )


def compare(
    tally: Tally, where: str, expected: tuple[str, int], allowed: bool, reason: int, detail: str
) -> None:
    tally.checks += 1
    family = FAMILY.get(reason, f"reason {api.Reason.Name(reason)}")
    got = ALLOW if allowed else family
    if expected[0] == QUIET and not allowed:
        got = QUIET
    if allowed != (expected[0] == ALLOW) or got != expected[0]:
        tally.disagreements.append(
            f"{where}: model {expected[0]} ({api.Reason.Name(expected[1])}), "
            f"service {'allowed' if allowed else 'denied'} {api.Reason.Name(reason)}: {detail}"
        )
    elif reason != expected[1]:
        tally.reasons_differ.append(
            f"{where}: model {api.Reason.Name(expected[1])}, service {api.Reason.Name(reason)}"
        )


async def few_at_a_time(calls: Iterable[Awaitable[Any]], at_once: int = 16) -> list[Any]:
    """Each call's answer, at most ``at_once`` in flight: a hundred history reads at
    once on a busy machine pass PostgreSQL's bound and are answered "not allowed"
    (INTERNAL_ERROR), fail-closed."""
    gate = asyncio.Semaphore(at_once)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def check(
    c: Client,
    model: Model,
    phones: list[str],
    now: datetime,
    moments: list[datetime],
    fresh: str,
    tally: Tally,
    where: str,
) -> None:
    calls = []
    for campaign in CAMPAIGNS:
        for phone in phones:
            asked = dict(phone=phone, brand=model.brand, campaign=campaign)
            asked["at_least_as_fresh"] = fresh
            calls.append((
                f"{where} CanSend {phone} {campaign} now", phone, campaign, now,
                c.CanSend(api.CanSendRequest(**asked)),
            ))  # fmt: skip
            for m in moments:
                calls.append((
                    f"{where} CanSendAsOf {phone} {campaign} at {m.isoformat()}",
                    phone,
                    campaign,
                    m,
                    c.CanSendAsOf(api.CanSendAsOfRequest(**asked, at=ts(m), known_at=ts(now))),
                ))  # fmt: skip
    answers = await few_at_a_time(call for *_, call in calls)
    for (label, phone, campaign, moment, _), a in zip(calls, answers, strict=True):
        expected = model.decide(phone, campaign, moment)
        compare(tally, label, expected, a.allowed, a.reason, a.detail)
    batches = await asyncio.gather(*(
        c.CanSendBatch(api.CanSendBatchRequest(
            brand=model.brand, campaign=campaign, phones=phones, at_least_as_fresh=fresh
        ))
        for campaign in CAMPAIGNS
    ))  # fmt: skip
    for campaign, batch in zip(CAMPAIGNS, batches, strict=True):
        for phone, d in zip(phones, batch.decisions, strict=True):
            expected = model.decide(phone, campaign, now)
            label = f"{where} CanSendBatch {phone} {campaign} now"
            compare(tally, label, expected, d.allowed, d.reason, d.detail)


async def run_seed(
    c: Client,
    clock: Clock,
    seed: int,
    facts: int,
    tally: Tally,
    fresh: Callable[[str], str],
    model: Model,
    erase: Client | None = None,
) -> None:
    """``erase`` (an admin's client): at one step, six years on, the number of that
    step has its data erased, and what follows is dated a month after that."""
    rng = random.Random(seed)
    phones = [f"+1415555{1000 + (seed % 900) * 10 + i:04d}" for i in range(2)]
    base = clock.now
    steps = history(rng, phones, base, facts)
    if erase is not None:
        steps[rng.randrange(facts)].erase = True
    written: list[datetime] = []
    for i, step in enumerate(steps):
        clock.now += timedelta(seconds=1)
        if step.erase:
            assert erase is not None
            erased = await erase_number(erase, model, step, clock, steps[i:])
            tally.writes["erasure" if erased else "erasure of nothing refused"] += 1
            fresh(erased)
        before = model.seq
        token = await apply(c, model, step, clock.now)
        outcome = "refused" if not token else "no fact" if model.seq == before else "in model"
        tally.writes[f"{step.what} {outcome}"] += 1
        if step.at < clock.now and step.at.year >= 2000:
            written.append(step.at)
        moments = [rng.choice(written)] if written else []
        moments.append(base - timedelta(seconds=rng.randrange(60, 30 * 86400)))
        if i == len(steps) - 1:
            moments += written
        where = (
            f"seed {seed} step {i} ({step.what} {step.phone} {step.campaign} {step.at.isoformat()})"
        )
        await check(c, model, phones, clock.now, moments, fresh(token), tally, where)


async def erase_number(
    admin: Client,
    model: Model,
    step: Step,
    clock: Clock,
    rest: list[Step],
) -> str:
    """Move the clock past the retention period of every fact so far (five years
    after the latest, "Retention, erasure and legal holds"), erase ``step``'s number,
    and date ``rest`` a month on: some of it after the erasure, what is dated in the
    2000s before it."""
    before = clock.now
    clock.now += timedelta(days=6 * 366)
    request = api.RequestErasureRequest(
        request_id=uuid.uuid4().hex, phone=step.phone, brand=model.brand, reference="DSR-1"
    )
    n = model._n(step.phone)
    token = ""
    if n.facts or n.holds:
        erasure = await admin.RequestErasure(request)
        assert erasure.consistency_token, erasure
        n.erased, token = clock.now, erasure.consistency_token
    else:
        # Nothing recorded of the number: nothing to erase, and nothing written.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.RequestErasure(request)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    clock.now += timedelta(days=31)
    for later in rest:
        if later.at.year >= 2020 or later.at > before:
            later.at += clock.now - before
    return token


def merged(tokens: list[str]) -> Callable[[str], str]:
    def fresh(token: str) -> str:
        if token:
            tokens.append(token)
        out = ConsistencyToken.decode(tokens[0])
        for t in tokens[1:]:
            out = out.merge(ConsistencyToken.decode(t))
        del tokens[1:]
        tokens[0] = out.encode()
        return tokens[0]

    return fresh


# A deeper search (minutes): CONSENT_ORACLE_FIRST_SEED=1000 CONSENT_ORACLE_SEEDS=200,
# with pytest --timeout=0.
FIRST_SEED = int(os.environ.get("CONSENT_ORACLE_FIRST_SEED", "0"))
SEEDS = int(os.environ.get("CONSENT_ORACLE_SEEDS", "8"))
FACTS = int(os.environ.get("CONSENT_ORACLE_FACTS", "25"))


@pytest.mark.parametrize("ledger", ["embedded", "kafka"])
async def test_the_service_answers_as_the_readme_says(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    seeds = list(range(FIRST_SEED, FIRST_SEED + SEEDS)) if ledger == "embedded" else [7, 11, 19, 23]
    clock = Clock(noon_in_los_angeles())
    defined_at = clock.now - timedelta(days=60)
    campaigns = [
        define(
            brand, name, defined_at, [number], purpose=PURPOSE[name in PROMOTIONAL],
            revoke_all=name in REVOKE_ALL_CAMPAIGNS.get(brand, ()),
        )
        for brand, senders in SENDERS.items()
        for name, number in senders.items()
    ]  # fmt: skip
    defined_at -= timedelta(seconds=1)  # define's time for the rules
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    tally = Tally()
    async with (
        serving(
            tmp_path, postgres_dsn, bootstrap, name="oracle", clock=clock, campaigns=campaigns
        ) as rt,
        client(rt.address, "acme-app") as acme,
        client(rt.address, "globex-app") as globex,
        client(rt.address, "acme-initech") as initech,
        client(rt.address) as admin,
    ):
        w = await acme.RecordOptIn(
            opt_in("+14155559999", "acme", "alerts", clock.now - timedelta(days=1))
        )
        fresh = merged([w.consistency_token])
        # A quarter of the seeds before the revoke-all rule; a quarter under globex,
        # which takes the rule up early, its histories on both sides of that; a
        # quarter under initech, one of whose campaigns honours it early; the rest
        # after the FCC's date, with an erasure (the clock only moves forward).
        quarter = (len(seeds) + 3) // 4
        for seed in seeds[:quarter]:
            await run_seed(acme, clock, seed, FACTS, tally, fresh, Model("acme", defined_at))
        w = await globex.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="globex", revoke_all=True)
        )
        fresh(w.consistency_token)
        since = clock.now
        clock.now += timedelta(days=15)
        for seed in seeds[quarter : 2 * quarter]:
            model = Model("globex", defined_at, revoke_all_since=since)
            await run_seed(globex, clock, seed, FACTS, tally, fresh, model)
        for seed in seeds[2 * quarter : 3 * quarter]:
            await run_seed(initech, clock, seed, FACTS, tally, fresh, Model("initech", defined_at))
        clock.now = max(clock.now, AFTER_RULE)
        # These last ones each erase a number's data six years on, then go on.
        for seed in seeds[3 * quarter :]:
            model = Model("acme", defined_at)
            await run_seed(acme, clock, seed, FACTS, tally, fresh, model, erase=admin)
    tally.assert_agreed(f"oracle: {len(seeds)} seeds x {FACTS} facts")


async def test_a_stop_under_the_brands_revoke_all_resolves_a_hold(tmp_path, postgres_dsn):
    """The oracle's first find: with the brand's SetBrandPolicy in force, a STOP to
    one campaign is an opt-out of every campaign, so it resolves a refused opt-out's
    hold as a RecordOptOut of that campaign does ("A STOP is never lost"), not only
    under a campaign's own ``revoke_all``. It read the campaign's rules as of their
    last version, from before the brand's setting, and left the hold."""
    clock = Clock(noon_in_los_angeles())
    campaigns = [
        define("globex", name, clock.now - timedelta(days=60), [number])
        for name, number in SENDERS["globex"].items()
    ]
    phone = "+14155550987"
    async with (
        serving(tmp_path, postgres_dsn, None, clock=clock, campaigns=campaigns) as rt,
        client(rt.address, "globex-app") as c,
    ):
        await c.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="globex", revoke_all=True)
        )
        clock.now += timedelta(days=1)
        await c.RecordOptIn(opt_in(phone, "globex", "alerts", clock.now - timedelta(hours=2)))
        ahead = opt_out(phone, "globex", "notices", clock.now + timedelta(days=2))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordOptOut(ahead)
        assert held_info(refused.value), refused.value
        stop = inbound(phone, SENDERS["globex"]["alerts"], "STOP", clock.now - timedelta(hours=1))
        w = await c.HandleInboundMessage(stop)
        asked = api.CanSendRequest(
            phone=phone, brand="globex", campaign="notices", at_least_as_fresh=w.consistency_token
        )
        answer = await c.CanSend(asked)
        assert (answer.allowed, answer.reason) == (False, api.REASON_REVOKED_BRAND_WIDE), answer
        pending = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="globex", at_least_as_fresh=w.consistency_token
            )
        )
        assert not pending.candidates, pending


# ---------------------------------------------------------------- what was known then


async def check_known(
    c: Client,
    model: Model,
    phones: list[str],
    stamps: list[datetime],
    moments: list[datetime],
    fresh: str,
    tally: Tally,
    where: str,
    rng: random.Random,
) -> None:
    """``CanSendAsOf`` for each of ``moments``: with a ``known_at`` one of the moments
    between writes (``stamps``), and without one, in hindsight."""
    calls = []
    for campaign in CAMPAIGNS:
        for phone in phones:
            for m in moments:
                asked = dict(phone=phone, brand=model.brand, campaign=campaign, at=ts(m))
                known = rng.choice(stamps)
                label = f"{where} CanSendAsOf {phone} {campaign} at {m.isoformat()}"
                calls.append((
                    f"{label} known {known.isoformat()}",
                    model.decide(phone, campaign, m, known=known),
                    c.CanSendAsOf(api.CanSendAsOfRequest(
                        **asked, known_at=ts(known), at_least_as_fresh=fresh
                    )),
                ))  # fmt: skip
                calls.append((
                    f"{label} in hindsight",
                    model.in_hindsight(phone, campaign, m),
                    c.CanSendAsOf(api.CanSendAsOfRequest(**asked, at_least_as_fresh=fresh)),
                ))  # fmt: skip
    answers = await few_at_a_time(call for *_, call in calls)
    for (label, expected, _), a in zip(calls, answers, strict=True):
        compare(tally, label, expected, a.allowed, a.reason, a.detail)


async def run_seed_known(
    c: Client, seed: int, facts: int, tally: Tally, fresh: Callable[[str], str], model: Model
) -> None:
    """A seed's history on the real clock, which the ledger's recorded times follow:
    after each write, the moment it was acknowledged is one the ledger had recorded
    it by, and the next write not yet."""
    rng = random.Random(seed)
    phones = [f"+1415556{1000 + (seed % 900) * 10 + i:04d}" for i in range(2)]
    steps = history(rng, phones, datetime.now(UTC), facts, recent=0.4)
    written: list[datetime] = []
    stamps: list[datetime] = [model.defined_rec]
    for i, step in enumerate(steps):
        now = datetime.now(UTC)
        if step.back is not None:
            # Not before the last write was acknowledged: a hold or a resolution that
            # write made is placed at the service's now, which the model knows only
            # to be within the write, so no moment asked about may fall within it.
            after = stamps[-1] + timedelta(microseconds=1)
            step.at = max(now - timedelta(seconds=step.back), after)
        before = model.seq
        token = await apply(c, model, step, now)
        stamp = datetime.now(UTC)
        model.stamp(stamp)
        stamps.append(stamp)
        outcome = "refused" if not token else "no fact" if model.seq == before else "in model"
        tally.writes[f"{step.what} {outcome}"] += 1
        if step.at < now and step.at.year >= 2000:
            written.append(step.at)
        moments = [rng.choice(stamps)]
        if written:
            moments.append(rng.choice(written))
        if i == len(steps) - 1:
            moments += stamps[1:]
        where = f"seed {seed} step {i} ({step.what} {step.phone} {step.campaign} {step.at})"
        await check_known(c, model, phones, stamps, moments, fresh(token), tally, where, rng)


KNOWN_SEEDS = int(os.environ.get("CONSENT_ORACLE_KNOWN_SEEDS", "2"))


async def test_what_was_known_then_answers_as_the_readme_says(tmp_path, postgres_dsn):
    """The oracle's history again, each fact dated before the rule, some a few seconds
    before they are written, on the real clock; ``CanSendAsOf`` asked of moments
    between writes with a ``known_at`` between writes, and without one."""
    seeds = list(range(FIRST_SEED, FIRST_SEED + KNOWN_SEEDS))
    defined_at = datetime.now(UTC) - timedelta(days=60)
    campaigns = [
        define("acme", name, defined_at, [number], purpose=PURPOSE[name in PROMOTIONAL])
        for name, number in SENDERS["acme"].items()
    ]
    tally = Tally()
    # The service's clock is the real one (``serving``'s default): the ledger stamps
    # ``recorded_at`` from it (PostgreSQL's clock, or the broker's), not from a test's
    # ``Clock``, so only on the real clock is ``known_at`` a moment between writes.
    async with (
        serving(tmp_path, postgres_dsn, None, name="known", campaigns=campaigns) as rt,
        client(rt.address, "acme-app") as acme,
    ):
        w = await acme.RecordOptIn(
            opt_in("+14155559998", "acme", "alerts", datetime.now(UTC) - timedelta(days=1))
        )
        fresh = merged([w.consistency_token])
        defined_rec = datetime.now(UTC)
        for seed in seeds:
            model = Model("acme", defined_at - timedelta(seconds=1))
            model.defined_rec = defined_rec
            await run_seed_known(acme, seed, FACTS, tally, fresh, model)
    tally.assert_agreed(f"oracle known: {len(seeds)} seeds x {FACTS} facts")


async def test_the_latest_opt_in_sets_the_tier_a_start_resumes(tmp_path, postgres_dsn):
    """A promotional campaign needs a written opt-in ("The policy", 3); of several,
    the latest stands, and a START resumes that one: a verbal opt-in after a written
    one leaves the campaign denied, after a STOP and START too, and the other way
    round allowed. The oracle's histories seldom hold such a START."""
    clock = Clock(noon_in_los_angeles())
    senders = SENDERS["acme"]
    campaign = define(
        "acme", "updates", clock.now - timedelta(days=60), [senders["updates"]],
        purpose=lpb.CAMPAIGN_PURPOSE_PROMOTIONAL,
    )  # fmt: skip
    written_last, verbal_last = "+14155550981", "+14155550982"
    async with (
        serving(tmp_path, postgres_dsn, None, clock=clock, campaigns=[campaign]) as rt,
        client(rt.address, "acme-app") as c,
    ):
        tokens = []
        for phone in (written_last, verbal_last):
            for hours, verbal in ((3, phone == written_last), (2, phone == verbal_last)):
                request = opt_in(phone, "acme", "updates", clock.now - timedelta(hours=hours))
                if verbal:
                    request.method = lpb.COLLECTION_METHOD_VERBAL
                    request.proof.collection_detail = "agreed on a call with the front desk"
                tokens.append((await c.RecordOptIn(request)).consistency_token)
        fresh = merged(tokens)

        async def answer(phone: str) -> tuple[bool, int]:
            asked = api.CanSendRequest(
                phone=phone, brand="acme", campaign="updates", at_least_as_fresh=fresh("")
            )
            a = await c.CanSend(asked)
            return a.allowed, a.reason

        insufficient = (False, api.REASON_CONSENT_TIER_INSUFFICIENT)
        assert await answer(verbal_last) == insufficient
        assert await answer(written_last) == (True, api.REASON_CONSENT_ACTIVE)
        for phone in (written_last, verbal_last):
            for text, hours in (("STOP", 1.0), ("START", 0.5)):
                at = clock.now - timedelta(hours=hours)
                w = await c.HandleInboundMessage(inbound(phone, senders["updates"], text, at))
                fresh(w.consistency_token)
        assert await answer(verbal_last) == insufficient
        assert await answer(written_last) == (True, api.REASON_CONSENT_ACTIVE)
