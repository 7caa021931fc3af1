"""The proof-of-opt-in packet: what an auditor hands a carrier or a court about one
number and one brand (optionally one campaign), assembled from the ledger alone.

``assemble`` is a pure function of the number's recorded history and the time of
the question. It answers what the provider's template asks for (name, email,
physical address, registration date and time, IP address or other method of
collection, form URL, consent wording, screenshot and its hash, the first message
sent) for every opt-in, lists what the record lacks of it (never invents it), and
adds the message history with the decision that allowed each send, replayed with
``ledger.policy.decide_as_of`` as the ledger knew it when the send was recorded,
every opt-out and reply with how it was handled, and the points of a timeline.
History is kept after an opt-out, so the packet is whole after one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.commands import ReplyKind
from ledger.deadlines import revocation_due
from ledger.digest import digest_of, with_phone_wide
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    AgeVerified,
    CampaignEvent,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    LegalHoldPlaced,
    LegalHoldReleased,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubjectErased,
    SubscriberEvent,
    SubscriberLocated,
)
from ledger.keywords import Intent
from ledger.policy import (
    Decision,
    Obligation,
    answered_late,
    as_one_number,
    decide_as_of,
    decide_folded,
    revokes_all,
)
from ledger.state import (
    CampaignHistory,
    SubscriberState,
    fold,
    fold_campaign,
    retained,
    retained_facts,
)
from ledger.status import ConsentState, consent_state
from ledger.validation import is_blank

PACKET_VERSION = 1
"""The packet's format; a field added later leaves it, a field changed or removed bumps it."""


@dataclass(frozen=True)
class EventRef:
    """Where and when the ledger recorded a fact, and who asked for it."""

    event_id: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    partition: int
    offset: int
    recorded_by: str
    summary: str
    phone: str = ""
    """The number the fact was recorded under: the packet's, or an earlier spelling
    of it (``ledger.phone.forms_stored_before``) whose facts count as its own."""

    @staticmethod
    def of(r: Recorded) -> EventRef:
        e = r.event
        return EventRef(
            str(e.event_id),
            e.EVENT_TYPE,
            e.occurred_at,
            r.recorded_at,
            r.position.partition,
            r.position.offset,
            e.recorded_by,
            describe(e),
            getattr(e, "phone", ""),
        )


@dataclass(frozen=True)
class TemplateItem:
    """One thing the provider's template asks for, and what the record holds of it."""

    key: str
    label: str
    value: str | None
    """As recorded; None when the record lacks it."""
    note: str = ""
    """Where the value comes from when not the obvious field, or why it is missing."""

    @property
    def missing(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class Ruling:
    """A ``ledger.policy.Decision``, as the packet shows it, with the moment replayed."""

    allowed: bool
    reason: str
    detail: str
    evidence: tuple[str, ...]
    obligations: tuple[str, ...]
    rule: str
    citation: str
    policy_version: int
    at: datetime
    """The world time of the send the decision was replayed for."""
    known_at: datetime
    """Only facts the ledger had recorded by then were read."""

    @staticmethod
    def of(decision: Decision, at: datetime, known_at: datetime) -> Ruling:
        return Ruling(
            decision.allowed,
            decision.reason.value,
            decision.detail,
            decision.evidence,
            tuple(o.value for o in decision.obligations),
            decision.rule,
            decision.citation,
            decision.policy_version,
            at,
            known_at,
        )


@dataclass(frozen=True)
class SentMessage:
    event: EventRef
    message_id: str
    campaign: str
    kind: str
    included_opt_out_language: bool
    identified_sender: bool
    decision: Ruling
    """What CanSend would have answered for this send, from what the ledger had
    recorded when the send was recorded (the send itself left out)."""
    hindsight: Ruling | None = None
    """The answer from everything the ledger holds now, when it differs: a fact
    recorded late (an opt-out reported after the send) shows here."""
    unmet_obligations: tuple[str, ...] = ()
    """Obligations of the decision the recorded send says it did not meet."""


@dataclass(frozen=True)
class ProofOfOptIn:
    """One opt-in (``ConsentGranted``) and what it holds of the provider's template."""

    event: EventRef
    campaign: str
    tier: str
    method: str
    source: str
    template: tuple[TemplateItem, ...]
    first_message: SentMessage | None
    """The first message of the campaign sent after this opt-in (before another)."""


@dataclass(frozen=True)
class OptOut:
    """A revocation, or a reply flagged as one, and how it was handled."""

    event: EventRef
    kind: str
    """``revocation``, ``candidate`` (a reply that reads like an opt-out) or
    ``unattributed`` (an opt-out no defined campaign could take)."""
    scope: str
    """The campaign it covers, ``every campaign of <brand>`` or ``every brand``."""
    channel: str
    text: str
    in_reply_to: str
    handling: str
    confirmation: str | None = None
    """The event id of the confirmation sent after it, if one was."""
    resolution: str | None = None
    """For a candidate: ``revoked`` or ``dismissed``, and by whom, when resolved."""
    due: datetime | None = None
    """For a candidate: when the ten business days to honour it end."""
    overdue: bool = False
    """For a candidate still unresolved when the packet was made and past ``due``
    then: it counts as a revocation, as CanSend answers (``revocation_overdue``)."""
    stated_at: datetime | None = None
    """For an opt-out stamped ahead of the service's clock, the time it said
    (``ConsentRevoked.stated_at``); ``event.occurred_at`` is when it was recorded,
    where it takes its place. A consent stated no later than this is refused."""


@dataclass(frozen=True)
class Reply:
    """A text the person sent, how it was read, and what followed from it."""

    event: EventRef
    message_id: str
    to_number: str
    campaign: str | None
    body: str
    read_as: str
    recorded: tuple[str, ...]
    """Event ids of the facts recorded from it (an opt-out, a resume, a flag)."""
    reply_sent: str | None
    """The event id of the reply it was owed and got, if any."""
    handling: str


@dataclass(frozen=True)
class TimelinePoint:
    """One point of the consent timeline picture."""

    at: datetime
    kind: str
    """``grant``, ``message``, ``stop``, ``confirmation``, ``resume``,
    ``reconfirmation``, ``reply``, ``flag``, ``resolution``."""
    label: str
    event_id: str
    campaign: str | None
    state: str | None = None
    """Where consent stands once this fact and every one before it in world order
    are folded (``ledger.status.consent_state``, as GetConsent reads it): ``active``,
    ``revoked``, ``review`` or ``none``; None for a point that changes no consent (a
    message, a text), which leaves it as the point before it did."""


@dataclass(frozen=True)
class Missing:
    """A field the template asks for that the record lacks, and why."""

    field: str
    why: str


@dataclass(frozen=True)
class Packet:
    phone: str
    brand: str
    campaign: str | None
    generated_at: datetime
    opt_ins: tuple[ProofOfOptIn, ...]
    messages: tuple[SentMessage, ...]
    opt_outs: tuple[OptOut, ...]
    replies: tuple[Reply, ...]
    other: tuple[EventRef, ...]
    """Reconfirmations, resumes, age verifications, locations, resolutions, legal
    holds and erasures."""
    events: tuple[EventRef, ...]
    """Every subscriber fact the packet rests on, in ledger order."""
    timeline: tuple[TimelinePoint, ...]
    missing: tuple[Missing, ...]
    version: int = PACKET_VERSION
    tamper_evidence: Mapping[str, Any] | None = None
    """The proof of ``events`` against the ledger's signed checkpoints, as JSON; the
    service adds it (``services.packets.evidence``), None where it has none."""


TEMPLATE_LABELS = {
    "name": "Name of the end user",
    "email": "Email address of the end user",
    "postal_address": "Physical address collected",
    "registered_at": "Registration date and time",
    "ip_address": "IP address or other method of collection",
    "form_url": "Complete web URL or details of other collection methods",
    "consent_text": "Consent wording shown",
    "screenshot_ref": "Screenshot of the form with the consent language",
    "screenshot_sha256": "SHA-256 of the screenshot",
    "first_message": "The first message sent after the opt-in",
}
"""What the provider's proof-of-opt-in template asks for, in its order, by the
packet's key (``../shared/policy``: the suspension notice's template)."""

FIRST_MESSAGE_TEXT_NOT_RECORDED = (
    "the ledger records that a message was sent, its kind and whether it carried "
    "opt-out language and named the sender, not its text: attach a copy from the "
    "sending platform"
)

_OWED_REPLY = {
    Intent.OPT_OUT.value: MessageKind.OPT_OUT_CONFIRMATION,
    Intent.OPT_OUT_BRAND_WIDE.value: MessageKind.OPT_OUT_CONFIRMATION,
    Intent.HELP.value: MessageKind.HELP_REPLY,
    Intent.OPT_IN.value: MessageKind.OPT_IN_CONFIRMATION,
    Intent.CONVERSATION.value: MessageKind.CONVERSATION_REPLY,
}
_READ_AS = {
    Intent.OPT_OUT.value: "an opt-out of the campaign (STOP)",
    Intent.OPT_OUT_BRAND_WIDE.value: "an opt-out of every campaign of the brand (STOPALL)",
    Intent.HELP.value: "a request for help (HELP)",
    Intent.OPT_IN.value: "a request to resume (START)",
    Intent.REVOCATION_CANDIDATE.value: "a possible opt-out, for a person to review",
    Intent.CONVERSATION.value: "a conversation",
    "": "not recorded (a text recorded before readings were kept)",
}


def describe(e: LedgerEvent) -> str:
    """A line a person reads about a fact."""
    if isinstance(e, ConsentGranted):
        return f"opt-in to {e.campaign} ({e.tier.name.lower()}, {e.method.value})"
    if isinstance(e, ConsentRevoked):
        scope = "every campaign" if e.campaign is None else e.campaign
        said = f' "{_short(e.text)}"' if e.text else ""
        return f"opt-out of {scope} by {e.channel.value}{said}"
    if isinstance(e, ConsentReconfirmed):
        return f"consent to {e.campaign} reconfirmed by {e.channel.value}"
    if isinstance(e, ConsentResumed):
        return f"consent resumed for {e.campaign or 'every campaign'}"
    if isinstance(e, MessageSent):
        return f"{e.kind.value.replace('_', ' ')} {e.message_id} sent for {e.campaign}"
    if isinstance(e, InboundMessageReceived):
        return f'text received: "{_short(e.body)}"'
    if isinstance(e, RevocationCandidateFlagged):
        if e.unattributed:
            what = ("imported " if e.imported else "") + "opt-out no campaign could take"
        elif e.provider_reported:
            what = "opt-out the SMS provider reported, held for review"
        elif e.imported:
            what = "imported opt-out held for review"
        elif e.reused_id:
            what = "opt-out refused for a request id used before, held for review"
        elif e.refused:
            what = "opt-out refused for its details, held for review"
        else:
            what = "reply flagged as opt-out"
        return f'{what}: "{_short(e.text)}"'
    if isinstance(e, RevocationCandidateResolved):
        by = f" by {e.resolved_by}" if e.resolved_by else ""
        return f"flagged reply resolved as {e.resolution.value}{by}"
    if isinstance(e, AgeVerified):
        return f"age verified ({e.method})"
    if isinstance(e, SubscriberLocated):
        return f"subscriber located in {e.region}"
    if isinstance(e, DeliveryOutcomeReported):
        code = f" (error {e.error_code})" if e.error_code else ""
        return f"{e.message_id} reported {e.outcome.value}{code}"
    if isinstance(e, SubjectErased):
        return "personal data erased" + (f" ({e.reference})" if e.reference else "")
    if isinstance(e, LegalHoldPlaced):
        return f"legal hold {e.hold_id} placed"
    if isinstance(e, LegalHoldReleased):
        return f"legal hold {e.hold_id} released"
    return e.EVENT_TYPE


def iso(t: datetime) -> str:
    """A time as the packet writes it: UTC, ISO 8601, ``Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _short(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _concerns(e: SubscriberEvent, campaign: str | None) -> bool:
    """Whether a fact bears on ``campaign`` (None: on the brand): it names the
    campaign, or names none (an opt-out of every campaign, a flagged reply), or is
    a hold, which denies every campaign of its brand whatever campaign it names (an
    imported opt-out held for review, one naming a campaign not defined)."""
    if campaign is None or isinstance(e, RevocationCandidateFlagged):
        return True
    named = getattr(e, "campaign", None)
    return named is None or named == campaign


def assemble(
    history: Iterable[Recorded],
    phone: str,
    brand: str,
    campaign: str | None,
    now: datetime,
    *,
    earlier: Sequence[str] = (),
) -> Packet:
    """The packet for ``phone`` and ``brand`` (``campaign``: only what bears on it).

    ``history`` holds the number's subscriber facts for the brand and those whose
    brand was unknown (``ANY_BRAND``), and the campaign facts of every campaign the
    number's facts name (``CampaignHistory.facts``), in any order; the packet reads
    them in ledger order. ``now`` is the moment the packet is made: decisions in
    hindsight read every fact recorded by then. ``earlier``: the spellings of
    ``phone`` an earlier version kept facts under (``ledger.phone.forms_stored_before``),
    whose facts in ``history`` are the number's, as CanSend counts them
    (``ledger.policy.as_one_number``), each shown under its own spelling.
    """
    everything = list(history)
    subscriber = sorted(
        (
            r
            for r in everything
            if isinstance(r.event, SubscriberEvent)
            and (r.event.phone == phone or r.event.phone in earlier)
            and r.event.brand in (brand, ANY_BRAND)
        ),
        key=lambda r: (r.position.partition, r.position.offset),
    )
    folded = subscriber
    if any(getattr(r.event, "phone", phone) != phone for r in subscriber):
        # Two spellings are two partitions: the order they are folded in is the
        # ledger's as as_one_number reads it, the same for what is shown.
        subscriber.sort(key=lambda r: r.recorded_at)
        folded = as_one_number(subscriber, phone)
    rules = [r for r in everything if isinstance(r.event, CampaignEvent) and r.event.brand == brand]
    revoke_all = _revoke_all_campaigns(rules, now)
    mine = [
        r
        for r in subscriber
        if _concerns(r.event, campaign)  # type: ignore[arg-type]
        # An opt-out of another campaign revokes this one under the revoke-all rule.
        or (campaign in revoke_all and isinstance(r.event, ConsentRevoked))
    ]

    sends = [r for r in mine if isinstance(r.event, MessageSent)]
    replayed = replays(folded, rules, now, {str(r.event.event_id) for r in sends})
    messages = {
        str(r.event.event_id): _message(r, *replayed[str(r.event.event_id)], now) for r in sends
    }
    # Facts a decision cites belong in the packet even when they name another
    # campaign (a STOP of another campaign under the revoke-all rule).
    cited = {i for m in messages.values() for i in (*m.decision.evidence,)}
    chosen = {id(r) for r in mine}
    shown = [r for r in subscriber if id(r) in chosen or str(r.event.event_id) in cited]

    opt_ins = tuple(
        _opt_in(r, shown, messages) for r in shown if isinstance(r.event, ConsentGranted)
    )
    opt_outs = tuple(_opt_out(r, shown, revoke_all, now) for r in shown if _is_opt_out(r.event))
    replies = tuple(_reply(r, shown) for r in shown if isinstance(r.event, InboundMessageReceived))
    other = tuple(
        EventRef.of(r)
        for r in shown
        if isinstance(
            r.event,
            ConsentReconfirmed
            | ConsentResumed
            | AgeVerified
            | SubscriberLocated
            | RevocationCandidateResolved
            | SubjectErased
            | LegalHoldPlaced
            | LegalHoldReleased,
        )
    )
    missing = _missing(opt_ins, campaign)
    return Packet(
        phone=phone,
        brand=brand,
        campaign=campaign,
        generated_at=now,
        opt_ins=opt_ins,
        # A send of another campaign that a decision cites (the one confirmation an
        # opt-out is owed, sent for a sibling campaign) is shown among the events as
        # evidence, not among the campaign's messages.
        messages=tuple(
            messages[key]
            for r in shown
            if isinstance(r.event, MessageSent) and (key := str(r.event.event_id)) in messages
        ),
        opt_outs=opt_outs,
        replies=replies,
        other=other,
        events=tuple(EventRef.of(r) for r in shown),
        timeline=tuple(_timeline(shown, folded, campaign, revoke_all)),
        missing=missing,
    )


def _revoke_all_campaigns(rules: Sequence[Recorded], now: datetime) -> set[str]:
    """The campaigns of ``rules`` that an opt-out of any campaign of their brand
    revokes, under their rules in force at ``now`` and their brand's settings
    (``ledger.policy.revokes_all``, as ``CanSend`` decides now)."""
    names = {r.event.campaign for r in rules if isinstance(r.event, CampaignEvent)}
    found = set()
    for name in names - {BRAND_SETTINGS}:
        facts = [r for r in rules if getattr(r.event, "campaign", None) in (name, BRAND_SETTINGS)]
        rules_now = fold_campaign(facts, CampaignHistory()).as_of(now)
        if rules_now is not None and revokes_all(rules_now, now):
            found.add(name)
    return found


def _is_opt_out(e: LedgerEvent) -> bool:
    return isinstance(e, ConsentRevoked | RevocationCandidateFlagged)


def replays(
    subscriber: Sequence[Recorded], rules: Sequence[Recorded], now: datetime, wanted: set[str]
) -> dict[str, tuple[Decision, Decision]]:
    """For each send in ``wanted``, the decision replayed for it then and in hindsight.

    Then: at the send's world time, from the facts the ledger had recorded before it
    (in its partition, before its offset; campaign rules by their recorded time), so
    the send itself, and any send recorded after it, are not counted against it.
    In hindsight: from every fact recorded by ``now``, the send itself left out.

    Both are ``decide_as_of``'s answers. To keep a long history linear, when none of
    the facts before a send lies after the moment asked about, then is asked of the
    states folded so far (``decide_folded``: they are what the facts they retain,
    ``ledger.state.retained_facts``, fold to again), and those facts are handed over
    in hindsight; otherwise, and in hindsight when a fact recorded after the send
    happened before it, every fact is handed over.
    Hindsight is the answer of then when nothing recorded since the send (a
    subscriber fact, a campaign's rules) speaks of the send's moment. A reply that
    CanSend counts as answered late (``ledger.policy.answered_late``) is the one send
    a fact recorded after it may allow in hindsight: the HELP or opt-out it answered."""
    states = {False: SubscriberState(), True: SubscriberState()}  # brand's, ANY_BRAND's
    latest_occurred = latest_recorded = None
    # The earliest moment any fact recorded after each position speaks of.
    earliest_after: list[datetime | None] = [None] * (len(subscriber) + 1)
    for i in range(len(subscriber) - 1, -1, -1):
        r = subscriber[i]
        moment = min(r.event.occurred_at, r.recorded_at)
        following = earliest_after[i + 1]
        earliest_after[i] = moment if following is None or moment < following else following
    one_partition = len({r.position.partition for r in subscriber}) <= 1

    def before(i: int, compact: bool) -> list[Recorded]:
        """The facts handed over for the send at ``i``."""
        if compact:
            return [*retained_facts(states[False]), *retained_facts(states[True])]
        return list(subscriber[:i])

    found: dict[str, tuple[Decision, Decision]] = {}
    places: dict[str, int] = {}
    for i, sent in enumerate(subscriber):
        e = sent.event
        if isinstance(e, MessageSent) and str(e.event_id) in wanted:
            places[str(e.event_id)] = i
            at, known = e.occurred_at, sent.recorded_at
            compact = (latest_occurred is None or latest_occurred <= at) and (
                latest_recorded is None or latest_recorded <= known
            )
            if compact and one_partition:
                # What the facts they retain fold to: the states, unless they retain
                # nothing (the fold of none is an empty state, and none for the
                # unknown brand's). Facts of two spellings are folded in the order
                # they were recorded, retained in ledger order: they are refolded.
                brands = states[False] if _retains(states[False]) else SubscriberState()
                phone_wide = states[True] if _retains(states[True]) else None
                then = decide_folded(rules, brands, phone_wide, e.campaign, at, known, e.kind)
            else:
                then = decide_as_of([*rules, *before(i, compact)], e.campaign, at, known, e.kind)
            # In hindsight what was recorded after the send counts against it, never
            # for it (an opt-in dated back once the send was made allows nothing).
            late = earliest_after[i + 1]
            if late is not None and late <= at:
                facts = [*subscriber[:i], *subscriber[i + 1 :]]
                later = decide_as_of([*rules, *facts], e.campaign, at, now, e.kind, known)
            elif any(r.recorded_at > known and r.event.occurred_at <= at for r in rules):
                facts = before(i, compact)
                later = decide_as_of([*rules, *facts], e.campaign, at, now, e.kind, known)
            else:  # nothing recorded since the send speaks of its moment
                later = then
            found[str(e.event_id)] = (then, later)
        wide = isinstance(e, SubscriberEvent) and e.brand == ANY_BRAND
        states[wide] = fold([sent], states[wide])
        if latest_occurred is None or e.occurred_at > latest_occurred:
            latest_occurred = e.occurred_at
        if latest_recorded is None or sent.recorded_at > latest_recorded:
            latest_recorded = sent.recorded_at
    # A reply recorded before the HELP or opt-out it answered, which CanSend leaves out
    # of the caps as its answer (``ledger.state.CampaignConsent.answered_late``): in
    # hindsight it is judged from every fact, the text recorded after it too.
    for key in answered_late(states[False], rules, now) & found.keys():
        i = places[key]
        e = subscriber[i].event
        assert isinstance(e, MessageSent)
        facts = [*subscriber[:i], *subscriber[i + 1 :]]
        owed = decide_as_of([*rules, *facts], e.campaign, e.occurred_at, now, e.kind)
        if owed.allowed:
            found[key] = (found[key][0], owed)
    return found


def _retains(state: SubscriberState) -> bool:
    """Whether ``state`` retains a fact (``ledger.state.retained``); one keeping sends
    for the caps does, and is not looked through for it."""
    return bool(state.brand_sent) or bool(retained(state))


def in_hindsight(then: Decision, later: Decision) -> Decision | None:
    """``later`` (a send's answer in hindsight, ``replays``) when it tells otherwise
    than ``then``, as the packet shows it: another answer, or, both allowing, one that
    owes what ``then`` did not (a reply recorded before the HELP it answered stood as
    the first message, and the send after it owed the opt-out language in order);
    None when it tells the same. The compliance sweep (``ledger.sweep``) finds a send
    by the same rule, so the two agree."""
    if (later.allowed, later.reason) != (then.allowed, then.reason):
        return later
    if later.allowed and not set(later.obligations) <= set(then.obligations):
        return later
    return None


def unmet_obligations(decision: Decision, message: MessageSent) -> tuple[Obligation, ...]:
    """The obligations of ``decision`` that ``message`` says it did not meet. Content
    (``NON_MARKETING_CONTENT_ONLY``) is not recorded, so it is never counted unmet."""
    unmet = []
    for obligation in decision.obligations:
        if obligation is Obligation.INCLUDE_OPT_OUT_LANGUAGE:
            met = message.included_opt_out_language
        elif obligation is Obligation.IDENTIFY_SENDER:
            met = message.identified_sender
        elif obligation is Obligation.RECONFIRM_IN_THIS_MESSAGE:
            met = message.kind is MessageKind.RECONFIRMATION_REQUEST
        else:
            met = True
        if not met:
            unmet.append(obligation)
    return tuple(unmet)


def _message(sent: Recorded, then: Decision, later: Decision, now: datetime) -> SentMessage:
    """The send, with the decision that allowed it (``replays``)."""
    e = sent.event
    assert isinstance(e, MessageSent)
    hindsight = None
    changed = in_hindsight(then, later)
    if changed is not None:
        hindsight = Ruling.of(changed, e.occurred_at, now)
    # The sweep's rule (``unmet_obligations``), so the two never tell a send apart.
    unmet = [o.value for o in unmet_obligations(then, e)] if then.allowed else []
    return SentMessage(
        EventRef.of(sent),
        e.message_id,
        e.campaign,
        e.kind.value,
        e.included_opt_out_language,
        e.identified_sender,
        Ruling.of(then, e.occurred_at, sent.recorded_at),
        hindsight,
        tuple(unmet),
    )


def _value(text: str) -> str | None:
    return None if is_blank(text) else text


def _opt_in(
    granted: Recorded, shown: Sequence[Recorded], messages: dict[str, SentMessage]
) -> ProofOfOptIn:
    e = granted.event
    assert isinstance(e, ConsentGranted)
    p, method = e.proof, e.method
    lacking = set(p.template_missing(method))  # the rule GetConsent and CanSend report by
    detail = _value(p.collection_detail)

    def item(key: str, value: str | None, note: str = "") -> TemplateItem:
        return TemplateItem(key, TEMPLATE_LABELS[key], value, note)

    def proof_field(key: str) -> TemplateItem:
        value = _value(getattr(p, key))
        if f"proof.{key}" in lacking or value is not None:
            return item(key, value)
        # The template allows "other method of collection" in place of an IP
        # address and a URL: the collection detail stands for them.
        return item(key, f"{method.value}: {detail}", "proof.collection_detail")

    if _value(p.consent_text) is not None:
        wording = item("consent_text", p.consent_text)
    elif _value(p.consent_text_sha256) and _value(p.consent_text_version):
        wording = item(
            "consent_text",
            f"version {p.consent_text_version}, SHA-256 {p.consent_text_sha256}",
            "the wording is kept in a document store; the ledger holds its version and hash",
        )
    else:
        wording = item("consent_text", None)
    first = _first_message(granted, shown, messages)
    template = (
        proof_field("name"),
        proof_field("email"),
        proof_field("postal_address"),
        item("registered_at", iso(p.registered_at)),
        proof_field("ip_address"),
        proof_field("form_url"),
        wording,
        proof_field("screenshot_ref"),
        item("screenshot_sha256", _value(p.screenshot_sha256)),
        item(
            "first_message",
            None
            if first is None
            else f"{first.kind} {first.message_id} at {iso(first.event.occurred_at)}",
            FIRST_MESSAGE_TEXT_NOT_RECORDED
            if first is not None
            else "no message was sent after it",
        ),
    )
    return ProofOfOptIn(
        EventRef.of(granted),
        e.campaign,
        e.tier.name.lower(),
        method.value,
        e.source.value,
        template,
        first,
    )


def _first_message(
    granted: Recorded, shown: Sequence[Recorded], messages: dict[str, SentMessage]
) -> SentMessage | None:
    """The campaign's first send after the opt-in, before the campaign's next opt-in,
    of those recorded after it. A send recorded before the opt-in went out before it
    was known, whatever time the opt-in gives (imported, or dated back): it is no
    first message of it, as the fold lets only such sends meet a consent's
    obligations (``ledger.state._reopened``)."""
    e = granted.event
    assert isinstance(e, ConsentGranted)
    for r in sorted(shown, key=lambda r: r.order_key):
        if r.order_key <= granted.order_key:
            continue
        if isinstance(r.event, ConsentGranted) and r.event.campaign == e.campaign:
            return None
        if (
            isinstance(r.event, MessageSent)
            and r.event.campaign == e.campaign
            and _recorded_after(r, granted)
        ):
            return messages.get(str(r.event.event_id))
    return None


def _recorded_after(r: Recorded, before: Recorded) -> bool:
    """Whether ``r`` was recorded after ``before``: by ledger order in one partition (a
    number's facts share one), else (a fact of the number's earlier spelling) by the
    time each was recorded."""
    if r.position.partition == before.position.partition:
        return r.position.offset > before.position.offset
    return r.recorded_at > before.recorded_at


def _scope(e: ConsentRevoked | RevocationCandidateFlagged) -> str:
    if e.brand == ANY_BRAND:
        return "every brand (the brand was unknown)"
    if e.campaign is None:
        return f"every campaign of {e.brand}"
    if isinstance(e, RevocationCandidateFlagged):
        # A hold denies every campaign of its brand until resolved, whatever campaign
        # the held opt-out named: naming only that one misled the other campaigns'
        # packets, which list it as the reason their sends were denied.
        return f"every campaign of {e.brand} until resolved (it named {e.campaign})"
    return e.campaign


def _reply_after(
    r: Recorded, shown: Sequence[Recorded], kind: MessageKind, campaign: str | None
) -> Recorded | None:
    """The first send of ``kind`` after ``r`` (of ``campaign`` when given), before the
    person's next text: the reply recorded for it."""
    for later in sorted(shown, key=lambda x: x.order_key):
        if later.order_key <= r.order_key:
            continue
        e = later.event
        if isinstance(e, InboundMessageReceived):
            return None
        if (
            isinstance(e, MessageSent)
            and e.kind is kind
            and (campaign is None or e.campaign == campaign)
        ):
            return later
    return None


def _opt_out(r: Recorded, shown: Sequence[Recorded], revoke_all: set[str], now: datetime) -> OptOut:
    """``revoke_all``: the campaigns an opt-out of another campaign of the brand
    revokes (``_revoke_all_campaigns``); an opt-out of one campaign names them too.
    ``now``: when the packet is made, which says whether a hold is overdue."""
    e = r.event
    ref = EventRef.of(r)
    if isinstance(e, ConsentRevoked):
        scope = _scope(e)
        also = sorted(revoke_all - {e.campaign})
        if e.campaign is not None and e.brand != ANY_BRAND and also:
            # Naming only its own campaign hid from an auditor what else it stopped.
            scope = (
                f"{e.campaign}, and under the revoke-all rule (47 CFR 64.1200(a)(10))"
                f" every campaign of {e.brand} it is in force for: {', '.join(also)}"
                " (a consent given after the opt-out is the person's newer word)"
            )
        confirmation = _reply_after(r, shown, MessageKind.OPT_OUT_CONFIRMATION, e.campaign)
        if confirmation is None:
            handling = "revoked from then on; no confirmation was recorded"
        else:
            handling = (
                "revoked from then on; one confirmation sent at "
                f"{iso(confirmation.event.occurred_at)}"
            )
        if e.imported:
            # CanSend allows it no confirmation: "none recorded" alone read as one owed.
            handling = (
                "imported: received by another platform, which owed its one confirmation"
                f" (none is allowed from this service); {handling}"
            )
        if e.stated_at is not None:
            # Shown only as its place, an auditor could not see why a consent stated
            # before this time, sent after it was recorded, was refused.
            handling = (
                f"stamped {iso(e.stated_at)}, ahead of the service's clock, so placed"
                f" when recorded; {handling}"
            )
        return OptOut(
            ref,
            "revocation",
            scope,
            e.channel.value,
            e.text,
            e.in_reply_to,
            handling,
            None if confirmation is None else str(confirmation.event.event_id),
            stated_at=e.stated_at,
        )
    assert isinstance(e, RevocationCandidateFlagged)
    due = revocation_due(e.occurred_at)
    resolved = next(
        (
            x.event
            for x in shown
            if isinstance(x.event, RevocationCandidateResolved)
            and x.event.candidate_event_id == e.event_id
        ),
        None,
    )
    overdue = resolved is None and due <= now
    if overdue:
        # Past its deadline CanSend counts it as a revocation (REVOCATION_OVERDUE):
        # "due" alone read as if it were still only awaiting review.
        came = "was held" if e.imported or e.refused or e.provider_reported else "came"
        handling = (
            f"overdue since {iso(due)}, not resolved within ten business days after it "
            f"{came}: it counts as a revocation and blocks every send of its scope until "
            "a person resolves it"
        )
        resolution = None
    elif resolved is None and e.unattributed:
        # CanSend counts it as an opt-out of every campaign (REVOKED_BRAND_WIDE) from
        # the start: "blocks every send" read as a hold that only awaited review.
        handling = (
            "names no defined campaign: it counts as an opt-out of every campaign of its "
            f"scope until a person resolves it (due {iso(due)})"
        )
        resolution = None
    elif resolved is None:
        handling = f"blocks every send of its scope until a person resolves it (due {iso(due)})"
        resolution = None
    else:
        by = f" by {resolved.resolved_by}" if resolved.resolved_by else ""
        resolution = f"{resolved.resolution.value}{by} at {iso(resolved.occurred_at)}"
        handling = f"blocked sending until resolved as {resolution}"
    return OptOut(
        ref,
        "unattributed" if e.unattributed else "candidate",
        _scope(e),
        "free_text",
        e.text,
        e.inbound_message_id,
        handling,
        None,
        resolution,
        due,
        overdue,
    )


def _reply(r: Recorded, shown: Sequence[Recorded]) -> Reply:
    e = r.event
    assert isinstance(e, InboundMessageReceived)
    recorded = [
        x
        for x in shown
        if (isinstance(x.event, ConsentRevoked) and x.event.in_reply_to == e.message_id)
        or (
            isinstance(x.event, ConsentResumed | RevocationCandidateFlagged)
            and x.event.inbound_message_id == e.message_id
        )
    ]
    owed = _OWED_REPLY.get(e.intent)
    answer = None if owed is None else _reply_after(r, shown, owed, e.campaign)
    parts = [f"read as {_READ_AS.get(e.intent, e.intent)}"]
    parts += [f"recorded {describe(x.event)}" for x in recorded]
    if answer is not None:
        parts.append(f"answered at {iso(answer.event.occurred_at)} ({describe(answer.event)})")
    elif owed is not None and owed is not MessageKind.CONVERSATION_REPLY:
        # A text whose first answer told the gateway no reply was owed (a START with
        # nothing to resume, a STOP while one was held): "none recorded" alone read
        # as one missed.
        none_owed = e.reply == ReplyKind.NONE.value
        missing = f"no {owed.value.replace('_', ' ')} was recorded"
        parts.append("no reply was owed when it came" if none_owed else missing)
    return Reply(
        EventRef.of(r),
        e.message_id,
        e.to_number,
        e.campaign,
        e.body,
        e.intent,
        tuple(str(x.event.event_id) for x in recorded),
        None if answer is None else str(answer.event.event_id),
        "; ".join(parts),
    )


_KIND_POINT = {
    MessageKind.OPT_OUT_CONFIRMATION: "confirmation",
    MessageKind.OPT_IN_CONFIRMATION: "confirmation",
}


_CONSENT_POINTS = frozenset({"grant", "stop", "flag", "resolution", "resume", "reconfirmation"})
"""The timeline's points that may change where consent stands."""

_POINT_ORDER = {
    kind: i
    for i, kind in enumerate(
        (
            "reply",
            "grant",
            "resume",
            "reconfirmation",
            "flag",
            "resolution",
            "stop",
            "confirmation",
            "message",
        )
    )
}
"""The order of the timeline's points at one instant: the person's text, then the facts
that give consent, then those that withdraw it (an opt-out wins a tie), then what was
sent. Facts of one kind at one instant go by event id. Ordered by the facts alone, not
where each was placed, two ledgers holding the same facts draw the same timeline."""
_CONSENT_FACTS = (
    ConsentGranted
    | ConsentRevoked
    | RevocationCandidateFlagged
    | RevocationCandidateResolved
    | ConsentResumed
    | ConsentReconfirmed
)

_PICTURED = {
    ConsentState.ACTIVE: "active",
    ConsentState.PENDING_REVIEW: "review",
    ConsentState.REVOKED: "revoked",
    ConsentState.REVOKED_BRAND_WIDE: "revoked",
    ConsentState.NEVER_GRANTED: "none",
    ConsentState.ERASED: "none",
}


def _states_after(
    folded: Sequence[Recorded], wanted: set[str], campaign: str | None, revoke_all: set[str]
) -> dict[str, str]:
    """For each fact of ``wanted`` (event ids), where consent stands once every fact up
    to its instant in world order is folded, as GetConsent reads the fold: for
    ``campaign``, or for the brand's campaigns (active if any one is).

    The picture once took each point's kind for the state it left: an opt-in drew
    "active" after it where the fold denies (an opt-out at the same instant, which
    wins the tie; an opt-out held for review before it; a START with no opt-in).
    Facts of one instant leave one state, whichever of them was placed first: the
    fold reads them as one moment, and two ledgers holding them in two orders drew
    two pictures."""
    states = {False: SubscriberState(), True: SubscriberState()}  # brand's, ANY_BRAND's
    found: dict[str, str] = {}
    waiting: list[str] = []  # wanted facts of the instant being folded

    def picture() -> str:
        digest = digest_of(states[False])
        if states[True].pending_candidates():
            digest = with_phone_wide(digest, digest_of(states[True])) or digest
        pending = digest.pending
        names = [campaign] if campaign is not None else sorted(digest.campaigns) or [""]
        pictured = {
            _PICTURED[
                consent_state(
                    digest,
                    name,
                    pending_review=bool(pending),
                    unattributed=any(p.unattributed for p in pending),
                    revoke_all=name in revoke_all,
                )
            ]
            for name in names
        }
        return next(s for s in ("active", "review", "revoked", "none") if s in pictured)

    ordered = sorted(folded, key=lambda r: r.order_key)
    for i, r in enumerate(ordered):
        wide = isinstance(r.event, SubscriberEvent) and r.event.brand == ANY_BRAND
        states[wide] = fold([r], states[wide])
        if str(r.event.event_id) in wanted:
            waiting.append(str(r.event.event_id))
        last = i + 1 == len(ordered) or ordered[i + 1].event.occurred_at != r.event.occurred_at
        if waiting and last:
            state = picture()
            found.update((event_id, state) for event_id in waiting)
            waiting.clear()
    return found


def _timeline(
    shown: Sequence[Recorded],
    folded: Sequence[Recorded],
    campaign: str | None,
    revoke_all: set[str],
) -> list[TimelinePoint]:
    """The picture's points in world order (``_POINT_ORDER`` at one instant), each
    consent fact with the state it leaves (``_states_after``)."""
    points = []
    wanted = {str(r.event.event_id) for r in shown if isinstance(r.event, _CONSENT_FACTS)}
    after = _states_after(folded, wanted, campaign, revoke_all)
    for r in shown:
        e = r.event
        named = getattr(e, "campaign", None)
        if isinstance(e, ConsentGranted):
            kind, label = "grant", f"opt-in {e.campaign}"
        elif isinstance(e, MessageSent):
            kind = _KIND_POINT.get(e.kind, "message")
            label = e.kind.value.replace("_", " ") if kind == "confirmation" else e.message_id
        elif isinstance(e, ConsentRevoked):
            kind, label = "stop", _short(e.text, 16) or f"opt-out ({e.channel.value})"
        elif isinstance(e, RevocationCandidateFlagged):
            kind, label = "flag", _short(e.text, 16)
        elif isinstance(e, RevocationCandidateResolved):
            kind, label = "resolution", e.resolution.value
        elif isinstance(e, ConsentResumed):
            kind, label = "resume", "resumed"
        elif isinstance(e, ConsentReconfirmed):
            kind, label = "reconfirmation", "reconfirmed"
        elif isinstance(e, InboundMessageReceived):
            if e.intent in (
                Intent.OPT_OUT.value,
                Intent.OPT_OUT_BRAND_WIDE.value,
                Intent.OPT_IN.value,
            ):
                continue  # its opt-out or resume is the point
            kind, label = "reply", _short(e.body, 16)
        else:
            continue
        state = after.get(str(e.event_id)) if kind in _CONSENT_POINTS else None
        points.append(TimelinePoint(e.occurred_at, kind, label, str(e.event_id), named, state))
    return sorted(points, key=lambda p: (p.at, _POINT_ORDER[p.kind], p.event_id))


def _missing(opt_ins: Sequence[ProofOfOptIn], campaign: str | None) -> tuple[Missing, ...]:
    if not opt_ins:
        scope = f"campaign {campaign}" if campaign else "any campaign of the brand"
        return (Missing("opt_ins", f"no opt-in is recorded for this number and {scope}"),)
    found = []
    for i, o in enumerate(opt_ins):
        for item in o.template:
            if item.missing:
                why = item.note or "left empty when the opt-in was recorded"
                found.append(Missing(f"opt_ins[{i}].{item.key}", why))
        if o.first_message is not None:
            found.append(
                Missing(f"opt_ins[{i}].first_message.text", FIRST_MESSAGE_TEXT_NOT_RECORDED)
            )
    return tuple(found)
