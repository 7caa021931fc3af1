"""Every reader gives the same answer about the same (number, campaign, moment), over
seeded histories of this month's rules: facts recorded after a send (hindsight), the
obligations a send owes (opt-out language not delivered, a late first message, a
reconfirmation not delivered), holds under the brand and under every brand ("*"), a
STOP delivered after the number it was sent to moved from one brand to another, the
provider's 21610, their review, sends recorded one at a time or in batches, and
changes of a campaign's rules (content category, purpose, age gate, caps, quiet
hours, revoke-all, conversation window) and the brand's revoke-all setting, recorded
now, dated back (refused before the latest rules) or stamped ahead within the skew.
Every reader must also name the rules it judged by: their ``policy_version`` and the
rules events among its evidence.

Readers compared, on the in-memory adapters (``tests/integration``'s
``test_readers_parity_postgres`` runs the same histories on the PostgreSQL view):
CanSend, CanSendBatch and CanSendAsOf (with and without ``known_at``) for now after
every fact and for past moments, GetConsent, the proof packet's and the compliance
sweep's answer for each send (as recorded and in hindsight), what CanSend told the
sender right before each send, the change stream's holds, the opt-out rate and
campaign health. Every history is written twice, its sends once by
``RecordMessageSent`` each and once in ``RecordMessagesSent`` batches: the two must
leave the same states and the same answers, obligations included."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap, QuietHours
from ledger.commands import (
    ChangeCampaignPolicy,
    DefineCampaign,
    HandleInboundMessage,
    RecordAgeVerification,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptIn,
    RecordOptOut,
    ResolveRevocationCandidate,
    SentMessage,
    SetBrandPolicy,
)
from ledger.digest import Digest
from ledger.errors import DomainError
from ledger.events import (
    MAX_CLOCK_SKEW,
    CandidateResolution,
    DeliveryOutcome,
    MessageKind,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
)
from ledger.packet import Ruling
from ledger.policy import Decision, Reason
from ledger.ports import ConsentView, DigestReads, Stream
from ledger.retention import RequestErasure, Retention
from ledger.status import ConsentState
from ledger.sweep import Finding, FindingKind
from services.adapters.digest_replica import CampaignHistoryCache
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.changes import CONSENT_CHANGES
from services.cli.audit.packet import summary
from services.errors import FailedPrecondition, PermissionDenied
from services.freshness import FreshnessGuard, WatchedAppends
from services.packets.document import to_document
from services.projector import Projector
from services.settings import FreshnessSettings
from services.usecases import UseCases
from services.usecases.imports import Imports, Item
from services.usecases.sweeps import SweepProgress
from tests.builders import at
from tests.builders import opt_in as an_opt_in
from tests.unit.usecase_harness import AUDITOR, stop_task

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONES = ("+14155552671", "+14155552672")
"""Two numbers in Los Angeles: a batch may hold both."""
SENDER = "+12125550184"
"""The number promo sends from: a text to it is a text to promo."""
UNOWNED = "+12125550198"
"""A number no campaign sends from: a STOP to it is held under every brand ("*")."""
MOVED = "+12125550177"
"""The number globex's deals sends from until it lets it go (a "move" step), when
acme's alerts takes it, or no campaign does: a STOP sent to it before, delivered
after, holds globex."""
TARGETS = (("acme", "promo"), ("acme", "alerts"), ("globex", "deals"))
"""Every (brand, campaign) the readers are asked about."""
POLICIES = {
    # A first message more than two hours after the consent must reconfirm it, and a
    # consent is reconfirmed every three days: both obligations come and go.
    ("acme", "promo"): CampaignPolicy(
        sender_numbers=(SENDER,),
        first_message_window=timedelta(hours=2),
        reconfirm_interval=timedelta(days=3),
    ),
    # Four messages a day: sends exempt from the caps (replies owed) and not count.
    ("acme", "alerts"): CampaignPolicy(frequency_caps=(FrequencyCap(4, timedelta(days=1)),)),
    # Conversational: a reply inside a conversation the person began needs no opt-in.
    ("globex", "deals"): CampaignPolicy(
        purpose=CampaignPurpose.CONVERSATIONAL, sender_numbers=(MOVED,)
    ),
}
SEEDS = range(16)
KINDS = (
    MessageKind.REGULAR,
    MessageKind.RECONFIRMATION_REQUEST,
    MessageKind.OPT_OUT_CONFIRMATION,
    MessageKind.HELP_REPLY,
    MessageKind.CONVERSATION_REPLY,
    MessageKind.OPT_IN_CONFIRMATION,
)
TICK = timedelta(microseconds=1)
AHEAD = timedelta(minutes=3)
RETENTION = Retention(years=1)
"""How long proof is kept: an "erase" step lets a year pass first."""
"""Within the clock skew a moment ahead of now may be asked about in CanSendAsOf."""

_STATE_OF = {
    Reason.REVOKED: ConsentState.REVOKED,
    Reason.REVOKED_BRAND_WIDE: ConsentState.REVOKED_BRAND_WIDE,
    Reason.REVOCATION_PENDING_REVIEW: ConsentState.PENDING_REVIEW,
    Reason.NO_CONSENT: ConsentState.NEVER_GRANTED,
    Reason.SUBJECT_ERASED: ConsentState.ERASED,
}
"""GetConsent's state for CanSend's reason; any reason not here (allowed, quiet hours,
a cap, ...) comes after the consent was found active."""


class Clock:
    """The service's and the ledger's time, moved on by the history."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Run:
    clock: Clock
    uses: UseCases
    ledger: InMemoryLedger
    guard: FreshnessGuard
    batched: bool
    imported: bool = False
    """Opt-ins and opt-outs imported (``ImportConsents``) rather than recorded one by one."""
    seq: int = 0
    policies: dict[tuple[str, str], CampaignPolicy] = field(default_factory=lambda: dict(POLICIES))
    """Each campaign's rules the ledger took last (a change refused leaves them)."""
    moved: datetime | None = None
    """When globex let its number go."""
    steps: int = 0
    first_of_step: set[tuple[str, str]] = field(default_factory=set)
    """(phone, message id) of each step's first send: none other was recorded before it
    at its moment (the sends of a step share the clock)."""
    sends: list[tuple[str, str, str]] = field(default_factory=list)
    told: dict[tuple[str, str], Said] = field(default_factory=dict)
    """What CanSend answered for a step's first send right before it was recorded."""
    """(phone, brand, message id) of every send, oldest first."""

    def rid(self, what: str) -> str:
        self.seq += 1
        return f"{what}-{self.seq}"


Backend = Callable[[], contextlib.AbstractAsyncContextManager[tuple[ConsentView, DigestReads]]]
"""A fresh view to project into, and what CanSend reads its digests from."""


@contextlib.asynccontextmanager
async def in_memory() -> AsyncIterator[tuple[ConsentView, DigestReads]]:
    view = InMemoryConsentView()
    yield view, view


@contextlib.asynccontextmanager
async def running(
    start: datetime, batched: bool, backend: Backend = in_memory
) -> AsyncIterator[Run]:
    clock = Clock(start)
    ledger = InMemoryLedger(partitions=4, clock=clock)
    async with backend() as (view, reads):
        projector = asyncio.create_task(Projector(ledger, view, poll_timeout=0.01).run())
        settings = FreshnessSettings(refresh_interval=0.01, wait_bound=5)
        guard = FreshnessGuard(ledger, reads, settings)
        await guard.start()
        try:
            # As ``services.bootstrap`` wires it: the guard hears of each write at once,
            # so a read after a write counts it.
            uses = UseCases.build(
                WatchedAppends(ledger, guard),
                view,
                guard,
                clock,
                reads=reads,
                campaigns=CampaignHistoryCache(view),
                retention=RETENTION,
            )
            yield Run(clock, uses, ledger, guard, batched)
        finally:
            await guard.stop()
            await stop_task(projector)


Step = tuple[Any, ...]


def plan(rng: random.Random) -> list[Step]:
    """A seeded history: what happens, in order, each step after some time passes."""
    steps: list[Step] = [
        ("opt_in", p, *t, 0) for p in PHONES for t in TARGETS if rng.random() < 0.8
    ]
    for _ in range(rng.randint(8, 14)):
        wait = rng.choice([1, 7, 40, 150, 60 * 20, 60 * 24 * 2, 60 * 24 * 4])
        steps.append(("wait", wait))
        op = rng.choices(
            [
                "opt_in",
                "sends",
                "outcome",
                "stop",
                "inbound_stop",
                "reply",
                "unowned",
                "resolve",
                "move",
                "late_stop",
                "erase",
                "rules",
            ],
            weights=[2, 6, 2, 3, 1, 1, 1, 2, 1, 2, 1, 5],
        )[0]
        phone, (brand, campaign) = rng.choice(PHONES), rng.choice(TARGETS)
        if op == "opt_in":
            # Dated back a while sometimes: recorded after sends it would have allowed.
            steps.append((op, phone, brand, campaign, rng.choice([0, 0, 30, 90])))
        elif op == "sends":
            messages = []
            for _ in range(rng.randint(1, 3)):
                messages.append(
                    (
                        rng.choice(PHONES),
                        rng.choice([c for b, c in TARGETS if b == brand]),
                        rng.choices(KINDS, [8, 2, 1, 1, 1, 1])[0],
                        rng.random() < 0.5,  # opt-out language
                        rng.random() < 0.8,  # sender named
                        rng.choice([0, 0, 0, 20]),  # minutes it is recorded late by
                    )
                )
            steps.append((op, brand, messages))
        elif op == "outcome":
            # 21610: the person opted out at the provider, which holds the number.
            code = rng.choice(["", "30003", "21610"])
            steps.append((op, DeliveryOutcome.FAILED if code else DeliveryOutcome.DELIVERED, code))
        elif op == "stop":
            # Reported late sometimes: sends made since were not allowed in hindsight.
            steps.append((op, phone, brand, rng.choice([campaign, None]), rng.choice([0, 45, 45])))
        elif op == "resolve":
            steps.append((op, phone, brand, rng.random() < 0.5))
        elif op == "move":  # to acme's alerts, or to no campaign
            steps.append((op, rng.random() < 0.5))
        elif op == "late_stop":  # sent this long before the number moved, if it did
            steps.append((op, phone, rng.choice([5, 30, 60 * 24])))
        elif op == "erase":  # once nothing happened for longer than the retention
            steps.append((op, phone, brand))
        elif op == "rules":  # a change of the campaign's rules, or the brand's
            what = rng.choices(CHANGES, [4, 2, 1, 1, 1, 1, 1, 1])[0]
            # Minutes dated back by: now, back a while (refused when before the latest
            # rules), back past every send, or ahead within the clock skew.
            back = rng.choice([0, 0, 30, 60 * 24 * 3, -3])
            steps.append((op, brand, campaign, what, rng.random(), back))
        elif op == "inbound_stop":  # or another keyword, to a campaign's number
            body = rng.choice(["STOP", "STOP", "START", "HELP", "hi there"])
            steps.append((op, phone, body, rng.choice([SENDER, MOVED])))
        else:
            steps.append((op, phone))
    return steps


async def define_every_campaign(run: Run) -> None:
    """Each campaign of ``POLICIES``, defined now."""
    for (brand, campaign), policy in POLICIES.items():
        await run.uses.writes.record(
            DefineCampaign(f"define-{campaign}", brand, campaign, policy, run.clock.now)
        )


async def write(run: Run, step: Step) -> None:
    """``step`` of a history, through the writers a caller would use."""
    uses, now = run.uses, run.clock.now
    run.steps += 1
    op = step[0]
    if op == "wait":
        run.clock.now += timedelta(minutes=step[1])
    elif op == "opt_in":
        _, phone, brand, campaign, back = step
        when = now - timedelta(minutes=back)
        cmd: Any = an_opt_in(when, campaign, phone=phone, brand=brand, request_id=run.rid("in"))
        await recorded(run, cmd)
    elif op == "sends":
        _, brand, sent = step
        messages = []
        for i, (phone, campaign, kind, language, named, late) in enumerate(sent):
            message_id = f"SM-{run.steps}-{i}"
            when = now - timedelta(minutes=late, seconds=len(sent) - i)
            messages.append(SentMessage(phone, campaign, message_id, kind, when, language, named))
        messages.sort(key=lambda m: m.occurred_at)
        first = messages[0]
        if first.occurred_at > now - MAX_CLOCK_SKEW:
            # What the sender is told just before it sends: the packet and the sweep
            # must judge the send as recorded by the same answer.
            told = await uses.checks.can_send(first.phone, brand, first.campaign, kind=first.kind)
            run.told[(first.phone, first.message_id)] = said(told.decision)
        if run.batched:
            await uses.sends.record(RecordMessagesSent(run.rid("batch"), brand, tuple(messages)))
        else:
            for m in messages:
                await uses.writes.record(
                    RecordMessageSent(
                        run.rid("sent"),
                        m.phone,
                        brand,
                        m.campaign,
                        m.message_id,
                        m.kind,
                        m.occurred_at,
                        m.included_opt_out_language,
                        m.identified_sender,
                    )
                )
        run.sends += [(m.phone, brand, m.message_id) for m in messages]
        run.first_of_step.add((messages[0].phone, messages[0].message_id))
    elif op == "outcome":
        if not run.sends:
            return
        phone, brand, message_id = run.sends[-1]
        await uses.writes.record(
            RecordDeliveryOutcome(run.rid("out"), phone, brand, message_id, step[1], now, step[2])
        )
    elif op == "stop":
        _, phone, brand, campaign, back = step
        when = now - timedelta(minutes=back)
        await recorded(
            run, RecordOptOut(run.rid("stop"), phone, brand, campaign, RevocationChannel.API, when)
        )
    elif op == "move":
        if run.moved is not None:
            return
        run.moved = now
        deals = replace(run.policies[("globex", "deals")], sender_numbers=())
        await uses.writes.record(
            ChangeCampaignPolicy(run.rid("move"), "globex", "deals", deals, now)
        )
        run.policies[("globex", "deals")] = deals
        await labelled(run)
        if step[1]:
            alerts = replace(run.policies[("acme", "alerts")], sender_numbers=(MOVED,))
            await uses.writes.record(
                ChangeCampaignPolicy(run.rid("claim"), "acme", "alerts", alerts, now)
            )
            run.policies[("acme", "alerts")] = alerts
            await labelled(run)
    elif op == "rules":
        _, brand, campaign, what, pick, back = step
        if what == "brand":  # revoke-all for every campaign of the brand, from now
            await uses.writes.record(SetBrandPolicy(run.rid("brand"), brand, revoke_all=True))
        else:
            policy = changed(run.policies[(brand, campaign)], what, pick)
            when = now - timedelta(minutes=back)
            await uses.writes.record(
                ChangeCampaignPolicy(run.rid("rules"), brand, campaign, policy, when)
            )
            run.policies[(brand, campaign)] = policy
        await labelled(run)
    elif op == "late_stop":
        _, phone, before = step
        rid = run.rid("text")
        if run.moved is None:  # globex's number still: a STOP to globex, now
            text = HandleInboundMessage(rid, phone, MOVED, "STOP", rid, now)
            await uses.writes.handle_inbound(text)
            return
        # Sent while globex sent from the number, delivered through acme's gateway:
        # acme's token writes for acme alone, so globex's hold goes under "*".
        sent = run.moved - timedelta(minutes=before)
        text = HandleInboundMessage(rid, phone, MOVED, "STOP", rid, sent)
        await uses.writes.handle_inbound(text, authorize=acme_only, unowned_brands=("acme",))
    elif op in ("inbound_stop", "reply", "unowned"):
        phone = step[1]
        to = {"unowned": UNOWNED, "reply": SENDER}.get(op) or step[3]
        body = {"reply": "please stop texting me", "unowned": "STOP"}.get(op) or step[2]
        rid = run.rid("text")
        await uses.writes.handle_inbound(HandleInboundMessage(rid, phone, to, body, rid, now))
    elif op == "erase":
        _, phone, brand = step
        run.clock.now += timedelta(days=366 * RETENTION.years + 1)
        await uses.erasure.erase(RequestErasure(run.rid("erase"), phone, brand))
    elif op == "resolve":
        _, phone, brand, revoke = step
        consent = await uses.audit.get_consent(
            phone, brand, "deals" if brand == "globex" else "promo", reader=AUDITOR
        )
        if not consent.pending:
            return
        # The oldest: GetConsent lists the holds in no order two runs share.
        held = min(consent.pending, key=lambda f: (f.event.brand, f.key)).event
        # "Revoked" under "*" would revoke no brand: such a STOP is only dismissed.
        resolution = (
            CandidateResolution.REVOKED
            if revoke and held.brand != "*"
            else CandidateResolution.DISMISSED
        )
        await uses.writes.record(
            ResolveRevocationCandidate(
                run.rid("resolve"), phone, held.brand, str(held.event_id), resolution, now
            )
        )
    else:  # pragma: no cover
        raise AssertionError(op)


async def recorded(run: Run, cmd: RecordOptIn | RecordOptOut) -> None:
    """An opt-in or an opt-out written by a single call, or imported (``ImportConsents``)."""
    if not run.imported:
        await run.uses.writes.record(cmd)
        return
    result = await Imports(run.uses.writes.ctx).chunk(
        [Item(run.seq, cmd, request_id=cmd.request_id)]
    )
    for refusal in result.refusals:
        raise FailedPrecondition("import", str(refusal))


def acme_only(brand: str) -> None:
    if brand != "acme":
        raise PermissionDenied("to_phone", "may not act for the brand of this number")


Said = tuple[bool, str, tuple[str, ...], int, tuple[str, ...]]


def said(d: Decision | Ruling) -> Said:
    """What every reader must agree on: allowed or not, why, what is owed, and the
    rules judged by (their version, and the rules' events named in evidence)."""
    reason = d.reason if isinstance(d.reason, str) else d.reason.value
    obligations = tuple(o if isinstance(o, str) else o.value for o in d.obligations)
    rules = tuple(_RULES[e] for e in d.evidence if e in _RULES)
    return d.allowed, reason, obligations, d.policy_version, rules


_RULES: dict[str, str] = {}
"""Each rules event's id (definition, change, brand setting) as "brand/campaign#n",
its place in the order the ledger recorded the campaign's: the same in every run of
a history, where the ids are not. Ids are unique, so one map serves every run."""

CHANGES = ("category", "purpose", "age", "caps", "quiet", "revoke_all", "window", "brand")


def changed(policy: CampaignPolicy, what: str, pick: float) -> CampaignPolicy:
    """``policy`` with one of its rules changed, by ``pick`` (0 to 1)."""
    if what == "category":  # "" and "general" are one content: no change of it
        return replace(policy, category=["", "general", "gambling", "alcohol"][int(pick * 4)])
    if what == "purpose" and policy.purpose is not CampaignPurpose.CONVERSATIONAL:
        promotional = policy.purpose is CampaignPurpose.PROMOTIONAL
        return replace(
            policy,
            purpose=CampaignPurpose.INFORMATIONAL if promotional else CampaignPurpose.PROMOTIONAL,
        )
    if what == "age":
        return replace(policy, age_gated=not policy.age_gated)
    if what == "caps":
        caps = () if pick < 0.5 else (FrequencyCap(2, timedelta(hours=1)),)
        return replace(policy, daily_cap=[None, 1, 3][int(pick * 3)], frequency_caps=caps)
    if what == "quiet":  # 11:00 to 18:00 in Los Angeles, to every message or not
        hours = QuietHours() if pick < 0.3 else QuietHours(time(11, 0), time(18, 0))
        return replace(policy, quiet_hours=hours, quiet_hours_apply_to_all=pick > 0.7)
    if what == "revoke_all":
        return replace(policy, revoke_all=not policy.revoke_all)
    window = [timedelta(minutes=30), timedelta(hours=3), timedelta(hours=24)][int(pick * 3)]
    return replace(policy, conversation_window=window)


async def labelled(run: Run) -> None:
    """Name the rules events the ledger holds (``_RULES``)."""
    found = await facts(run, Stream.CAMPAIGNS)
    count: Counter[str] = Counter()
    for r in sorted(found, key=lambda r: (r.position.partition, r.position.offset)):
        key = f"{r.event.brand}/{getattr(r.event, 'campaign', '')}"
        count[key] += 1
        _RULES[str(r.event.event_id)] = f"{key}#{count[key]}"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def without_ids(digest: Digest | None) -> str:
    """``digest`` without its event ids: two runs of one history name their own ids
    (and order the holds by them)."""
    if digest is not None:
        pending = sorted(p._replace(event_id="") for p in digest.pending)
        digest = digest._replace(pending=tuple(pending))
    return _UUID.sub("<id>", repr(digest))


async def sweep_findings(
    run: Run, brand: str, campaign: str, start: datetime
) -> dict[str, Finding]:
    found: dict[str, Finding] = {}
    end = run.clock.now + timedelta(seconds=1)
    async for item in run.uses.audit.sweep(brand, campaign, start, end, reader=AUDITOR):
        if not isinstance(item, SweepProgress):
            found[item.message.message_id] = item
    return found


async def now_agree(run: Run, seen: Counter[str]) -> None:
    """CanSend, CanSendBatch and CanSendAsOf for now (from the view's digests, and
    from the number's history) and GetConsent agree as each fact lands."""
    checks, now = run.uses.checks, run.clock.now
    for brand, campaign in TARGETS:
        for kind in (MessageKind.REGULAR, MessageKind.RECONFIRMATION_REQUEST):
            batch = await checks.can_send_batch(list(PHONES), brand, campaign, kind=kind)
            for phone, in_batch in zip(PHONES, batch.decisions, strict=True):
                where = (phone, campaign, kind, now.isoformat(), run.batched)
                one = (await checks.can_send(phone, brand, campaign, kind=kind)).decision
                then = await checks.can_send_as_of(
                    phone, brand, campaign, now, kind=kind, reader=AUDITOR
                )
                known = await checks.can_send_as_of(
                    phone, brand, campaign, now, now, kind=kind, reader=AUDITOR
                )
                assert in_batch == one, (where, in_batch, one)
                assert then.decision == one, (where, then.decision, one)
                assert known.decision == one, (where, known.decision, one)
                # A moment a little ahead: planned from the digests, and asked of the
                # history (within the clock skew CanSendAsOf allows ahead of now).
                ahead = now + AHEAD
                planned = await checks.can_send(phone, brand, campaign, at=ahead, kind=kind)
                asked = await checks.can_send_as_of(
                    phone, brand, campaign, ahead, kind=kind, reader=AUDITOR
                )
                assert planned.provisional, where
                assert planned.decision == asked.decision, (where, planned, asked)
                seen[f"step {one.reason.value}"] += 1
        for phone in PHONES:
            state, held = await consent_agrees(run, phone, brand, campaign)
            seen[f"{brand} {state}{' held' if held else ''}"] += 1


async def consent_agrees(run: Run, phone: str, brand: str, campaign: str) -> tuple[str, int]:
    """GetConsent's state of now, held to what CanSend answers."""
    one = await run.uses.checks.can_send(phone, brand, campaign)
    consent = await run.uses.audit.get_consent(phone, brand, campaign, reader=AUDITOR)
    reason = one.decision.reason
    where = (phone, campaign, run.clock.now.isoformat(), one.decision, consent)
    if consent.pending:
        assert reason in (
            Reason.REVOCATION_PENDING_REVIEW,
            Reason.REVOCATION_OVERDUE,
            Reason.REVOKED_BRAND_WIDE,
            Reason.REVOKED,
        ), where
    if reason is Reason.REVOCATION_OVERDUE:
        assert consent.state in (ConsentState.PENDING_REVIEW, ConsentState.REVOKED_BRAND_WIDE), (
            where
        )
    elif reason in _STATE_OF:
        assert consent.state is _STATE_OF[reason], where
    elif reason in (
        Reason.CONSENT_TIER_INSUFFICIENT,
        Reason.CONVERSATION_WINDOW_CLOSED,
        Reason.CONVERSATION_REPLY,
    ):
        # A text of the person's consents to that conversation alone: no grant.
        assert consent.state in (ConsentState.ACTIVE, ConsentState.NEVER_GRANTED), where
    elif consent.grant is None and campaign == "deals":
        # Past the consent by a conversation the person began (deals is
        # conversational), then denied by a later rule (an age gate, a cap): no grant.
        assert consent.state is ConsentState.NEVER_GRANTED, where
    else:
        assert consent.state is ConsentState.ACTIVE, where
    return consent.state.value, len(consent.pending)


async def answers(run: Run, start: datetime, seen: Counter[str]) -> dict[str, Any]:
    """Every reader's answers about the history ``run`` holds, held to one another;
    what they agreed on, to hold the two ways of sending to the same."""
    uses, now = run.uses, run.clock.now
    checks, audit = uses.checks, uses.audit
    out: dict[str, Any] = {}
    moments = [now]
    rules = await facts(run, Stream.CAMPAIGNS)
    # Either side of each fact, and of each change of the rules as recorded: a content
    # change dated back counts from then.
    around = [r.event.occurred_at for r in await facts(run) + rules]
    for at_ in around + [r.recorded_at for r in rules]:
        for delta in (-1, 1):
            moment = at_ + timedelta(seconds=delta)
            if moment < now - MAX_CLOCK_SKEW - timedelta(seconds=1) and moment > start:
                moments.append(moment)
    moments = sorted(set(moments))
    for brand, campaign in TARGETS:
        for moment in moments:
            past = moment < now
            batch = await checks.can_send_batch(
                list(PHONES), brand, campaign, at=moment if past else None, reader=AUDITOR
            )
            for phone, in_batch in zip(PHONES, batch.decisions, strict=True):
                where = (phone, campaign, moment.isoformat(), run.batched)
                one = await checks.can_send(
                    phone, brand, campaign, at=moment if past else None, reader=AUDITOR
                )
                hindsight = await checks.can_send_as_of(
                    phone, brand, campaign, moment, reader=AUDITOR
                )
                known_now = await checks.can_send_as_of(
                    phone, brand, campaign, moment, now, reader=AUDITOR
                )
                answer = said(one.decision)
                seen[f"{'past' if past else 'now'} {answer[1]}"] += 1
                for o in answer[2]:
                    seen[o] += 1
                if answer[3] > 1:  # judged by rules changed since the definition
                    seen[f"changed rules {answer[1]}{' named' if answer[4] else ''}"] += 1
                assert said(in_batch) == answer, (where, in_batch, one.decision)
                assert said(hindsight.decision) == answer, (where, hindsight.decision, one)
                if not past:
                    # Nothing is recorded after now: in hindsight and as known now agree.
                    assert said(known_now.decision) == answer, (where, known_now.decision)
                elif hindsight.decision.allowed:
                    # Hindsight counts a late fact against a moment, never for it (nor
                    # for other grounds of an allow, which known_at now may give).
                    assert known_now.decision.allowed, (where, known_now.decision)
                out[repr(where[:3])] = answer
        # GetConsent says of now what CanSend says.
        for phone in PHONES:
            out[f"consent {phone} {campaign}"] = await consent_agrees(run, phone, brand, campaign)
    # The packet's answer for each send, as recorded and in hindsight, is the sweep's.
    for brand, campaign in TARGETS:
        findings = await sweep_findings(run, brand, campaign, start)
        times = [r.recorded_at for r in await facts(run) + await facts(run, Stream.CAMPAIGNS)]
        for phone in PHONES:
            packet = (await audit.proof_packet(phone, brand, campaign, reader=AUDITOR)).value
            for m in packet.messages:
                if m.campaign != campaign:
                    continue
                where = (phone, campaign, m.message_id, run.batched)
                finding = findings.get(m.message_id)
                # Every send names no answer it relied on: each has a finding.
                assert finding is not None, where
                then = finding.as_recorded if finding.hindsight else finding.decision
                assert then is not None
                ruling = said(m.decision)
                assert ruling == said(then), (where, m.decision, then)
                sent, recorded = m.decision.at, m.decision.known_at
                kind = MessageKind(m.kind)
                told = run.told.get((phone, m.message_id))
                if told is not None:
                    assert told == ruling, (where, told, m.decision)
                    seen["send as told asked"] += 1
                if (phone, m.message_id) in run.first_of_step:
                    # Nothing else was recorded at its moment: CanSendAsOf, known just
                    # before the send was recorded, leaves the send out as the packet does.
                    asked = await checks.can_send_as_of(
                        phone, brand, campaign, sent, recorded - TICK, kind=kind, reader=AUDITOR
                    )
                    assert said(asked.decision) == ruling, (where, asked.decision, m.decision)
                    seen["send as recorded asked"] += 1
                grace = sent + MAX_CLOCK_SKEW
                if recorded <= grace and not any(recorded < r <= grace for r in times):
                    # In hindsight, just before the send (which it leaves out): what the
                    # packet says in hindsight. What was recorded after the send counts
                    # only against it in the packet, and in CanSendAsOf only when
                    # recorded past the clock skew after the moment (README, "The
                    # moment asked about"): asked only when nothing falls between.
                    asked = await checks.can_send_as_of(
                        phone, brand, campaign, sent - TICK, kind=kind, reader=AUDITOR
                    )
                    # With no ruling in hindsight (it judged the send alike), the
                    # packet names the rules as recorded: rules dated back since may
                    # be others, so only the judgement is compared then.
                    later = m.hindsight or m.decision
                    width = 2 if m.hindsight is None else 5
                    assert (
                        without_owed(said(asked.decision))[:width]
                        == without_owed(said(later))[:width]
                    ), (where, asked.decision, later)
                    seen["send in hindsight asked"] += 1
                unmet = tuple(o.value for o in finding.unmet)
                assert tuple(m.unmet_obligations) == unmet, (where, m, finding)
                assert (FindingKind.OBLIGATIONS_UNMET in finding.kinds) == bool(
                    m.unmet_obligations
                ), (where, m, finding)
                if m.hindsight is None:
                    assert not finding.hindsight, (where, m, finding)
                else:
                    assert finding.hindsight, (where, m, finding)
                    assert without_owed(said(m.hindsight)) == without_owed(
                        said(finding.decision)
                    ), (where, m.hindsight, finding.decision)
                    seen["hindsight differs"] += 1
                    seen["hindsight by other rules"] += (
                        m.hindsight.policy_version != m.decision.policy_version
                    )
                seen[f"send {m.decision.reason}"] += 1
                seen["send under changed rules"] += m.decision.policy_version > 1
                for o in m.unmet_obligations:
                    seen[f"unmet {o}"] += 1
                out[repr(where[:3])] = (
                    m.decision.allowed,
                    m.decision.reason,
                    m.unmet_obligations,
                    None if m.hindsight is None else said(m.hindsight),
                    tuple(k.value for k in finding.kinds),
                )
        await stream_agrees(run, brand, campaign, seen)
        rate = (await audit.opt_out_rate(brand, campaign, start, now, reader=AUDITOR)).value
        health = (await audit.campaign_health(brand, campaign, start, now, reader=AUDITOR)).value
        out[f"rate {campaign}"] = rate.counts
        out[f"health {campaign}"] = [(c.campaign, c.counts) for c in health.campaigns]
    for brand in ("acme", "globex"):
        for phone in PHONES:
            state = (await run.uses.checks.reads.digests(brand, [phone])).get(phone)
            out[f"digest {brand} {phone}"] = without_ids(state)
    return out


async def stream_agrees(run: Run, brand: str, campaign: str, seen: Counter[str]) -> None:
    """The change stream of the campaign (``WatchConsentChanges``' pages) holds every
    hold GetConsent lists as pending, resolved by nothing it holds, and every fact a
    denial of CanSend's stands on."""
    page = await run.uses.checks.ctx.view.changes(
        brand, {}, 100_000, campaign=campaign, types=CONSENT_CHANGES
    )
    listed = {str(r.event.event_id): r.event for r in page.events}
    resolved = {
        str(e.candidate_event_id)
        for e in listed.values()
        if isinstance(e, RevocationCandidateResolved)
    }
    for phone in PHONES:
        where = (phone, brand, campaign)
        consent = await run.uses.audit.get_consent(phone, brand, campaign, reader=AUDITOR)
        pending = {str(f.event.event_id) for f in consent.pending}
        streamed = {
            i
            for i, e in listed.items()
            if isinstance(e, RevocationCandidateFlagged) and e.phone == phone and i not in resolved
        }
        assert streamed == pending, (where, streamed, pending)
        one = (await run.uses.checks.can_send(phone, brand, campaign)).decision
        if one.reason in _STATE_OF or one.reason is Reason.REVOCATION_OVERDUE:
            # A denial for consent stands on facts the stream gave: a watcher that
            # follows it knows the number may not be texted. But for the rules: the
            # stream holds no campaign's changes, a content change's among them.
            assert set(one.evidence) - set(_RULES) <= set(listed), (where, one)
            seen["stream without the rules"] += any(e in _RULES for e in one.evidence)
            seen[f"stream {one.reason.value}"] += bool(one.evidence)


async def facts(run: Run, stream: Stream = Stream.SUBSCRIBERS) -> list[Recorded]:
    found = []
    for partition in await run.ledger.partitions(stream):
        found += await run.ledger.read(stream, partition, 0, 100_000)
    return found


def without_owed(s: Said) -> Said:
    """``s`` but what is owed: an answer in hindsight is compared without it."""
    return (*s[:2], (), *s[3:])


async def history(
    seed: int,
    batched: bool,
    seen: Counter[str],
    backend: Backend = in_memory,
    after_each: Callable[[Run], Awaitable[None]] | None = None,
    *,
    imported: bool = False,
    steps: list[Step] | None = None,
) -> dict[str, Any]:
    """The history of ``seed``, its sends batched or not, on ``backend``: every reader's
    answers, held to one another (and to ``after_each``'s, after every fact)."""
    start = at(0)
    async with running(start - timedelta(days=1), batched, backend) as run:
        run.imported = imported
        await define_every_campaign(run)
        for brand in ("acme", "globex"):
            # One number verified 21 or older: an age gate lets it be texted alone.
            await run.uses.writes.record(
                RecordAgeVerification(
                    f"age-{brand}", PHONES[0], brand, "id-scan", run.clock.now, "", True
                )
            )
        await labelled(run)
        run.clock.now = start
        for step in plan(random.Random(seed)) if steps is None else steps:
            try:
                await write(run, step)
            except (DomainError, FailedPrecondition) as exc:  # refused alike both ways
                seen[f"refused {step[0]}: {type(exc).__name__}"] += 1
            if step[0] != "wait":
                await now_agree(run, seen)
                if after_each is not None:
                    await after_each(run)
        run.clock.now += timedelta(minutes=10)
        return await answers(run, start - timedelta(days=1), seen)


async def test_every_reader_answers_alike_and_batched_sends_as_single_ones():
    seen: Counter[str] = Counter()
    for seed in SEEDS:
        single = await history(seed, False, seen)
        batched = await history(seed, True, seen)
        differ = {k: (single.get(k), batched.get(k)) for k in single.keys() | batched.keys()}
        differ = {k: v for k, v in differ.items() if v[0] != v[1]}
        assert not differ, (seed, differ)
    # The histories reach what the rules are about.
    reached = (
        "hindsight differs",
        "unmet include_opt_out_language",
        "unmet reconfirm_in_this_message",
        "globex revoked_brand_wide held",
        "send as told asked",
        "send as recorded asked",
        "send in hindsight asked",
        "send under changed rules",
        "changed rules no_consent named",
        "refused rules: FailedPrecondition",
    )
    assert not [what for what in reached if not seen[what]], seen


def replies_dated_back(what: str, pick: float) -> list[Step]:
    """Both numbers text deals (conversational), one opted in, replies and a regular
    send, then a change of deals' rules dated back before them, then replies under it."""
    reply = [(p, "deals", MessageKind.CONVERSATION_REPLY, False, False, 0) for p in PHONES]
    regular = [(p, "deals", MessageKind.REGULAR, True, True, 0) for p in PHONES]
    return [
        ("opt_in", PHONES[0], "globex", "deals", 0),
        *[("inbound_stop", p, "hi there", MOVED) for p in PHONES],
        ("wait", 1),
        ("sends", "globex", reply),
        ("wait", 40),
        ("sends", "globex", regular),
        ("wait", 5),
        ("rules", "globex", "deals", what, pick, 120),
        ("wait", 7),
        ("sends", "globex", reply),
    ]


def dated_back(what: str, pick: float) -> list[Step]:
    """Sends to both numbers (one verified 21 or older), then a change of promo's
    rules dated back before them, recorded after, then sends under it."""
    sends = [(p, "promo", MessageKind.REGULAR, True, True, 0) for p in PHONES]
    return [
        *[("opt_in", p, "acme", "promo", 0) for p in PHONES],
        ("wait", 60),
        ("sends", "acme", sends),
        ("wait", 30),
        ("rules", "acme", "promo", what, pick, 120),
        ("wait", 7),
        ("sends", "acme", sends),
    ]


async def test_rules_dated_back_past_sends_are_read_alike():
    """Each kind of change, dated back past sends (promo's, then deals' replies): the
    packet and the sweep judge the sends by the rules then as recorded, by the later
    ones in hindsight, and every reader names the version it judged by, sends single
    or batched."""
    seen: Counter[str] = Counter()
    for i, (what, pick) in enumerate(
        [
            *[("age", 0), ("quiet", 0.5), ("category", 0.6), ("caps", 0.9), ("purpose", 0)],
            *[("window", 0.1), ("age", 0.5), ("caps", 0.5)],  # deals' (from the 6th)
        ]
    ):
        steps = dated_back(what, pick)
        if i >= 5:
            steps = replies_dated_back(what, pick)
        single = await history(i, False, seen, steps=steps)
        batched = await history(i, True, seen, steps=steps)
        differ = {k: (single.get(k), batched.get(k)) for k in single.keys() | batched.keys()}
        assert not {k: v for k, v in differ.items() if v[0] != v[1]}, (what, differ)
    assert seen["hindsight by other rules"] and seen["send under changed rules"], seen


def imports_differ(single: dict[str, Any], imported: dict[str, Any]) -> dict[str, Any]:
    """Where the answers of a history written one by one and imported differ, but for
    the digests' marks of imported opt-outs (``revocation_imported``)."""
    differ = {}
    for k in single.keys() | imported.keys():
        mine = imported.get(k)
        if k.startswith("digest ") and isinstance(mine, str):
            mine = mine.replace("imported=True", "imported=False")
        if single.get(k) != mine:
            differ[k] = (single.get(k), imported.get(k))
    return differ


async def test_imported_opt_ins_and_opt_outs_answer_as_recorded_ones():
    """``ImportConsents`` writes what single opt-ins and opt-outs write: every reader
    answers alike after either, but that an imported opt-out is marked so."""
    seen: Counter[str] = Counter()
    marked = 0
    for seed in SEEDS[:8]:
        single = await history(seed, False, seen)
        imported = await history(seed, False, seen, imported=True)
        assert not imports_differ(single, imported), seed
        marked += sum("revocation_imported=True" in str(v) for v in imported.values())
    assert marked


async def test_an_imported_opt_out_owes_no_confirmation_and_a_live_one_after_it_does():
    """An imported opt-out was another platform's to confirm: every reader (CanSend
    before the send, the packet, the sweep, CanSendAsOf) judges the confirmation sent
    right after it not allowed, and the one sent right after a live STOP that follows
    it allowed; recorded one by one, both are allowed."""
    phone = PHONES[0]
    confirmation = [(phone, "promo", MessageKind.OPT_OUT_CONFIRMATION, False, True, 0)]
    steps: list[Step] = [
        ("opt_in", phone, "acme", "promo", 60),
        ("wait", 1),
        ("stop", phone, "acme", "promo", 1),
        ("wait", 1),  # each send recorded a moment after the opt-out it confirms
        ("sends", "acme", confirmation),
        ("wait", 10),
        ("inbound_stop", phone, "STOP", SENDER),
        ("wait", 1),
        ("sends", "acme", confirmation),
    ]
    seen: Counter[str] = Counter()
    single = await history(0, False, seen, steps=steps)
    imported = await history(0, False, seen, imported=True, steps=steps)
    first, second = (repr((phone, "promo", f"SM-{n}-0")) for n in (5, 9))
    assert single[first][:2] == (True, Reason.OPT_OUT_CONFIRMATION_ALLOWED.value)
    assert imported[first][:2] == (False, Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED.value)
    assert single[second][:2] == imported[second][:2] == single[first][:2]
    # Not owed, the imported run's first confirmation counts towards the caps as a
    # send (``MessageSent.exempt``): its digest holds it.
    assert set(imports_differ(single, imported)) == {first, f"digest acme {phone}"}


async def test_an_opt_in_recorded_after_an_allowed_reply_changes_no_reading_of_it():
    """A reply inside a conversation the person began (globex's deals is
    conversational), then an opt-in dated back before it, recorded after: in hindsight
    the reply stands on that consent (CONSENT_ACTIVE, with its obligations), yet a fact
    recorded after a send never counts for it. The packet gave it a "hindsight" ruling
    that allowed it, which the CLI counted "not allowed in hindsight" and the PDF
    marked, and CanSendAsOf for its moment answer CONSENT_ACTIVE, the late opt-in its
    evidence, while the sweep found nothing in hindsight: all now read it as sent."""
    phone, seen = PHONES[0], Counter[str]()
    async with running(at(0) - timedelta(days=1), False) as run:
        await define_every_campaign(run)
        run.clock.now = at(0)
        reply = (phone, "deals", MessageKind.CONVERSATION_REPLY, False, False, 0)
        for step in [
            ("inbound_stop", phone, "hi there", MOVED),
            ("wait", 1),
            ("sends", "globex", [reply]),
            ("wait", 30),
            ("opt_in", phone, "globex", "deals", 90),
            ("wait", 10),
        ]:
            await write(run, step)
        answers_of = await answers(run, at(0) - timedelta(days=1), seen)
        packet = (await run.uses.audit.proof_packet(phone, "globex", reader=AUDITOR)).value
        (message,) = packet.messages
        asked = await run.uses.checks.can_send_as_of(
            phone, "globex", "deals", message.decision.at, kind=reply[2], reader=AUDITOR
        )
    assert said(asked.decision)[:3] == (True, "conversation_reply", ()), asked
    assert (message.decision.allowed, message.decision.reason) == (True, "conversation_reply")
    assert message.hindsight is None, message.hindsight
    said_of = summary(to_document(packet))
    assert "(0 not allowed when sent, 0 not allowed in hindsight)" in said_of, said_of
    assert answers_of[repr((phone, "deals", message.message_id))][3] is None


async def test_a_consent_to_content_the_campaign_no_longer_sends_is_shown_as_none():
    """An opt-in to promo's general messages, then rules recorded after it that say
    promo has sent gambling since before it: CanSend denies NO_CONSENT, naming those
    rules, and GetConsent showed the consent ACTIVE, as if it allowed what the
    person never agreed to. It shows none granted (the grant still shown) until a
    new opt-in, which both read as active."""
    phone = PHONES[0]
    async with running(at(0), False) as run:
        promo = POLICIES[("acme", "promo")]
        await run.uses.writes.record(DefineCampaign("define", "acme", "promo", promo, at(0)))
        await run.uses.writes.record(
            RecordAgeVerification("age", phone, "acme", "id-scan", at(0), "", True)
        )
        run.clock.now = at(60)
        await run.uses.writes.record(an_opt_in(at(60), phone=phone, brand="acme"))
        run.clock.now = at(120)
        gambling = replace(promo, category="gambling")
        await run.uses.writes.record(
            ChangeCampaignPolicy("rules", "acme", "promo", gambling, at(30))
        )
        one = (await run.uses.checks.can_send(phone, "acme", "promo")).decision
        consent = await run.uses.audit.get_consent(phone, "acme", "promo", reader=AUDITOR)
        assert (one.allowed, one.reason, one.policy_version) == (False, Reason.NO_CONSENT, 2)
        assert consent.state is ConsentState.NEVER_GRANTED, consent
        assert consent.grant is not None and consent.revocation is None, consent
        run.clock.now = at(130)
        await run.uses.writes.record(
            an_opt_in(at(130), phone=phone, brand="acme", request_id="req-2")
        )
        one = (await run.uses.checks.can_send(phone, "acme", "promo")).decision
        consent = await run.uses.audit.get_consent(phone, "acme", "promo", reader=AUDITOR)
        assert one.allowed and consent.state is ConsentState.ACTIVE, (one, consent)


async def test_every_allow_names_the_rules_it_was_judged_by():
    """A reply inside a conversation, a HELP's reply and an opt-out's confirmation
    are judged by the campaign's rules (its conversation and confirmation windows),
    yet their allows named no rules event where a consent's allow does (README, "A
    campaign's rules over time"): each names the rules in force, changed or not."""
    phone, seen = PHONES[0], Counter[str]()
    async with running(at(0) - timedelta(days=1), False) as run:
        await define_every_campaign(run)
        run.clock.now = at(0)
        await write(run, ("rules", "globex", "deals", "window", 0.5, 0))
        asked: list[Said] = []
        for body, kind in [
            ("hi there", MessageKind.CONVERSATION_REPLY),
            ("HELP", MessageKind.HELP_REPLY),
            ("STOP", MessageKind.OPT_OUT_CONFIRMATION),
        ]:
            await write(run, ("wait", 1))
            await write(run, ("inbound_stop", phone, body, MOVED))
            d = (await run.uses.checks.can_send(phone, "globex", "deals", kind=kind)).decision
            asked.append(said(d))
        await now_agree(run, seen)
    assert [a[:2] for a in asked] == [
        (True, "conversation_reply"),
        (True, "help_reply_allowed"),
        (True, "opt_out_confirmation_allowed"),
    ], asked
    assert {a[3:] for a in asked} == {(2, ("globex/deals#2",))}, asked
