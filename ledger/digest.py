"""The digest: what the policy reads about one phone and brand, and nothing else.

A folded ``SubscriberState`` keeps whole events, proof of consent included, so an
auditor can be shown them. The policy needs far less: for each fact it reads, when
it happened, where the ledger put it and its id, plus a tier, a text or a date of
birth here and there, and the number's time zones. ``digest_of`` flattens a state
into exactly that, in named tuples of ints and strings: cheap to store beside the
state, cheap to read back, and the same input whether the state was folded a
moment ago or read from a projection.

``ledger.policy`` evaluates digests only (``decide`` takes a state and digests it
first), so there is one implementation of the rules for both paths.

Times are whole microseconds since the Unix epoch, in UTC: the resolution of
``datetime``, so converting back and forth loses nothing, and comparing them
orders facts exactly as comparing the datetimes would.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, TypeVar

from ledger.deadlines import revocation_due
from ledger.events import (
    CollectionMethod,
    ConsentRevoked,
    ConsentTier,
    MessageKind,
    RevocationCandidateFlagged,
)
from ledger.numbers import places
from ledger.regions import with_supplied, zones_with_region
from ledger.state import (
    CampaignConsent,
    Fact,
    SentRecord,
    SubscriberState,
    consent_anchor,
    ended_elsewhere,
    located_region,
    stated_key,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_T = TypeVar("_T", bound=tuple[Any, ...])


class _Built(Protocol):
    def __call__(self, cls: type[_T], fields: tuple[Any, ...], /) -> _T: ...


built: _Built = tuple.__new__
"""``built(cls, fields)`` is ``cls(*fields)`` for a named tuple ``cls`` given every field,
without the class's Python-level constructor, for what a batch builds per number
(its decoded digest, its standing, its answer).
Measured: 14 % less CPU per number on the batch path (bench/HISTORY.md, 2026-12-02)."""


class Mark(NamedTuple):
    """One fact as the policy sees it."""

    at: int
    """When it happened (microseconds, see ``micros``)."""
    offset: int
    """Where the ledger put it: among facts of the same moment, the later offset is later."""
    event_id: str

    def before(self, other: Mark) -> bool:
        """Whether this fact comes before ``other`` in world order: by time, then offset."""
        return (self.at, self.offset) < (other.at, other.offset)


def micros(moment: datetime) -> int:
    """A timezone-aware datetime as whole microseconds since the epoch."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def micros_of(span: timedelta) -> int:
    return span // _MICROSECOND


class CampaignDigest(NamedTuple):
    """One campaign's consent for one phone and brand."""

    grant: Mark | None = None
    tier: int = 0
    """The ``ConsentTier`` the grant reaches (``reached_tier``; 0 without one)."""
    revocation: Mark | None = None
    """This campaign's own latest opt-out (a brand-wide one is on the ``Digest``)."""
    resume: Mark | None = None
    reconfirmation: Mark | None = None
    sent: tuple[Mark, ...] = ()
    """Counted sends within the longest cap window, oldest first, and the replies that
    escaped the caps (``ledger.state.CampaignConsent.escaped``), each also in
    ``answered_late``: the policy counts one sent outside its reply window."""
    first_sent_at: int | None = None
    """When the first counted send since the campaign's latest consent went out
    (``ledger.state.CampaignConsent.opener``), or that consent's time once a
    reconfirmation request with the opt-out language went out since it; None when
    nothing was sent since it."""
    last_disclosed_at: int | None = None
    """When the latest counted send that carried opt-out language went out."""
    help_request: Mark | None = None
    """The latest HELP the person sent this campaign's number."""
    help_reply: Mark | None = None
    """The latest help reply sent for this campaign."""
    opt_in_confirmation: Mark | None = None
    """The latest confirmation of a START sent for this campaign."""
    proof_missing: tuple[str, ...] = ()
    """What the grant's proof lacks of the provider's template
    (``ConsentProof.template_missing``), reported with every answer."""
    last_inbound: Mark | None = None
    """The latest text the person sent this campaign's number: a conversation is the
    campaign's whose number the person texted, and no other's."""
    revocation_said: Mark | None = None
    """The opt-out latest by the time it said (``ledger.state.stated_key``), at that
    time, where that is later than ``revocation``'s place (it was stamped ahead);
    None otherwise. A consent outranks the campaign's opt-outs only when it is later
    than ``revocation`` by place and than this by the time it said."""
    grant_stated: int | None = None
    """When ``grant`` said it happened, where that is later than its place."""
    resume_stated: int | None = None
    """When ``resume`` said it happened, where that is later than its place."""
    revocation_imported: bool = False
    """Whether ``revocation`` was imported (``ConsentRevoked.imported``): another
    platform received it and owed its one confirmation, so this service owes none."""
    answered_late: tuple[Mark, ...] = ()
    """The replies of ``sent`` that answered a HELP, START or opt-out: those recorded
    before it reached the ledger (``ledger.state.CampaignConsent.answered_late``),
    then those that escaped the caps (``escaped``), each oldest first; each the mark
    of that text or opt-out (its time and place) with the reply's event id. The
    policy leaves one sent within the reply window in force when it was sent out of
    the caps, as the facts' own order would."""
    conversed: tuple[Mark, ...] = ()
    """As ``answered_late``, for the conversation replies of ``sent`` that escaped the
    caps (``ledger.state.CampaignConsent.escaped``): each the mark of the person's
    text that opened the conversation with the reply's event id, judged by the
    conversation window in force when it was sent."""
    ended_elsewhere: tuple[Mark, ...] = ()
    """The conversation replies and START confirmations of ``sent`` that escaped the
    caps though an opt-out of another campaign was placed between them and what
    earned them (``ledger.state._ended_elsewhere_by``), each its own mark: under the
    revoke-all rule that opt-out ended the exchange, and the policy counts them."""


EMPTY_CAMPAIGN = CampaignDigest()


class Age(NamedTuple):
    event_id: str
    verified_21_plus: bool
    date_of_birth: str


class Pending(NamedTuple):
    """A reply that reads like an opt-out, or another opt-out held, awaiting review."""

    event_id: str
    text: str
    due: int
    """When it counts as a revocation if still unresolved: ten business days after it
    was flagged (``ledger.deadlines.revocation_due``), worked out when digested, so
    the policy only compares."""
    unattributed: bool
    """An opt-out no defined campaign could take: it counts for every campaign."""
    imported: bool
    """An import's opt-out held for its details, not a reply
    (``RevocationCandidateFlagged.imported``): answers say which was held."""
    refused: bool
    """A live opt-out (``RecordOptOut``, an inbound STOP) refused for its details and
    held, not a reply (``RevocationCandidateFlagged.refused``)."""
    reused_id: bool
    """Of those, one refused for a request id used before, not for a detail
    (``RevocationCandidateFlagged.reused_id``)."""
    provider: bool
    """Held because the SMS provider reported the recipient opted out there
    (``RevocationCandidateFlagged.provider_reported``), not a reply."""


class Located(NamedTuple):
    """Where the subscriber said they are, and the opt-in that said so."""

    state: str
    event_id: str


class Digest(NamedTuple):
    """Everything ``ledger.policy`` reads about one phone towards one brand."""

    brand: str = ""
    zones: tuple[str, ...] = ()
    """The number's time zones (``ledger.phone.time_zones``), found once when digested."""
    pending: tuple[Pending, ...] = ()
    """Replies that read like an opt-out and other opt-outs held, awaiting review, by
    id."""
    brand_revocation: Mark | None = None
    brand_resume: Mark | None = None
    age: Age | None = None
    last_inbound: Mark | None = None
    confirmations: tuple[Mark, ...] = ()
    """Opt-out confirmations sent (kept as long as any send is), oldest first."""
    campaigns: Mapping[str, CampaignDigest] = {}
    """Each campaign's digest by name."""

    regions: tuple[str, ...] = ()
    """The US states the recipient may be in (``ledger.regions.candidate_regions``):
    the number's and the one the subscriber gave; each state's rules apply."""
    located: Located | None = None
    """The opt-in that said where the subscriber is, if any."""
    erased: Mark | None = None
    """The latest erasure of the subject's personal data (``SubscriberState.erased``):
    a send it leaves without consent is denied as ``SUBJECT_ERASED``."""
    brand_revocation_said: Mark | None = None
    """``CampaignDigest.revocation_said`` of the brand-wide opt-outs."""
    brand_resume_stated: int | None = None
    """When ``brand_resume`` said it happened, where that is later than its place."""
    brand_revocation_asked: int | None = None
    """Where a review recorded ``brand_revocation`` (a resolution's "revoked", a
    reviewer's or a covering opt-out's: ``held_asked``), when the person asked: the
    time of the reply or opt-out held that it resolved. Its one confirmation counts
    from then, not from the review; None for any other opt-out."""
    brand_revocation_imported: bool = False
    """``CampaignDigest.revocation_imported`` of ``brand_revocation``, which is also
    true of the opt-out a review recorded for an import's opt-out held
    (``held_imported``)."""

    def campaign(self, name: str) -> CampaignDigest:
        return self.campaigns.get(name, EMPTY_CAMPAIGN)


def _mark(fact: Fact[Any] | None) -> Mark | None:
    if fact is None:
        return None
    event = fact.event
    at = (event.occurred_at - EPOCH) // _MICROSECOND
    return built(Mark, (at, fact.position.offset, str(event.event_id)))


def _stated(fact: Fact[Any] | None) -> int | None:
    """A consent's stated time (``grant_stated``), where later than its place."""
    if fact is None or fact.event.stated_at is None:
        return None
    at = stated_key(fact)[0]
    return None if at == fact.event.occurred_at else (at - EPOCH) // _MICROSECOND


def _said(said: Fact[ConsentRevoked] | None, placed: Fact[ConsentRevoked] | None) -> Mark | None:
    """``revocation_said``: the opt-out ``said`` at the time it said, where that is
    later than the place of ``placed`` (the latest by place); None where it adds
    nothing to ``placed``'s mark."""
    if said is None or placed is None or said.event.stated_at is None:
        return None
    at, offset = stated_key(said)
    if at <= placed.event.occurred_at:
        return None
    return built(Mark, ((at - EPOCH) // _MICROSECOND, offset, str(said.event.event_id)))


def _sent(record: SentRecord) -> Mark:
    """A send's mark: its time is when it was sent."""
    return built(
        Mark, ((record.at - EPOCH) // _MICROSECOND, record.fact.position.offset, record.event_id)
    )


def _sent_mark(record: SentRecord | None) -> Mark | None:
    return None if record is None else _sent(record)


UNWRITTEN = frozenset({CollectionMethod.VERBAL, CollectionMethod.API_IMPORT})
"""Methods that leave no agreement in writing signed by the person: said on the
phone, or imported without saying how it was given."""


def reached_tier(tier: ConsentTier, method: CollectionMethod) -> int:
    """How far a grant reaches: a promotional one needs the person's written agreement
    (47 CFR 64.1200(a)(2), (f)(9): prior express written consent, signed on paper,
    by a web form's checkbox or by the person's own text, E-SIGN), so one given by
    an ``UNWRITTEN`` method is express consent only, which reaches informational
    messages and no promotional campaign."""
    if tier is ConsentTier.PROMOTIONAL and method in UNWRITTEN:
        return int(ConsentTier.INFORMATIONAL)
    return int(tier)


def informational_only(tier: ConsentTier, method: CollectionMethod) -> bool:
    """Whether an opt-in reaches less than the tier it asks for (``reached_tier``):
    a write of one says so, so that an import of promotional opt-ins learns when it
    imports them that they allow no promotional campaign."""
    return reached_tier(tier, method) < int(tier)


def _first_sent_at(c: CampaignConsent, brand_resume: Fact[Any] | None) -> int | None:
    """``CampaignDigest.first_sent_at``: the first message since the campaign's latest
    consent, or that consent's own time once a reconfirmation request carrying the
    opt-out language went out since it (a late first message was met by it)."""
    anchor = consent_anchor(c, brand_resume)
    if anchor is None:
        return None
    reconfirming, undelivered = c.reconfirming, c.unreconfirmed
    if (
        reconfirming is not None
        and reconfirming.at >= anchor.at
        and (undelivered is None or undelivered.event.message_id != reconfirming.message_id)
    ):
        return micros(anchor.at)
    opener = c.opener
    return None if opener is None else micros(opener.at)


def _campaign_digest(c: CampaignConsent, brand_resume: Fact[Any] | None) -> CampaignDigest:
    grant = c.grant
    last_disclosed = c.last_disclosed
    undisclosed = c.undisclosed
    if (
        undisclosed is not None
        and last_disclosed is not None
        and undisclosed.event.message_id == last_disclosed.message_id
    ):
        last_disclosed = None  # never delivered: its opt-out language is owed again
    # Positional, through ``built``, in CampaignDigest's field order: a projection
    # digests every state it writes, and the keyword constructors run in Python.
    return built(
        CampaignDigest,
        (
            _mark(grant),
            reached_tier(grant.event.tier, grant.event.method) if grant is not None else 0,
            _mark(c.revocation),
            _mark(c.resume),
            _mark(c.reconfirmation),
            _counted_marks(c),
            _first_sent_at(c, brand_resume),
            None if last_disclosed is None else (last_disclosed.at - EPOCH) // _MICROSECOND,
            _mark(c.help_request),
            _sent_mark(c.help_reply),
            _sent_mark(c.opt_in_confirmation),
            (
                tuple(grant.event.proof.template_missing(grant.event.method))
                if grant is not None
                else ()
            ),
            _mark(c.last_inbound),
            _said(c.revocation_said, c.revocation),
            _stated(grant),
            _stated(c.resume),
            c.revocation is not None and c.revocation.event.imported,
            *_answered_marks(c),
        ),
    )


def _counted_marks(c: CampaignConsent) -> tuple[Mark, ...]:
    """``CampaignDigest.sent``: the counted sends and the replies that escaped."""
    if not c.escaped:
        return tuple([_sent(s) for s in c.sent]) if c.sent else ()
    return tuple(sorted([_sent(s) for s in (*c.sent, *c.escaped)]))


def _answered_marks(
    c: CampaignConsent,
) -> tuple[tuple[Mark, ...], tuple[Mark, ...], tuple[Mark, ...]]:
    """``CampaignDigest.answered_late`` (the replies answered late, then those escaped),
    ``conversed`` (the conversation replies escaped) and ``ended_elsewhere``."""
    if not c.answered_late and not c.escaped:
        return (), (), ()  # most states: nothing to carry
    late = [_answered(r) for r in c.answered_late]
    conversed: list[Mark] = []
    ended: list[Mark] = []
    for r in c.escaped:
        (conversed if r.kind is MessageKind.CONVERSATION_REPLY else late).append(_answered(r))
        if ended_elsewhere(r):
            ended.append(_sent(r))
    return tuple(late), tuple(conversed), tuple(ended)


def _answered(record: SentRecord) -> Mark:
    """``CampaignDigest.answered_late``'s mark of a reply and what it answered."""
    text = record.basis[0]
    return built(Mark, (micros(text.event.occurred_at), text.position.offset, record.event_id))


def _resolved_hold(
    state: SubscriberState,
) -> tuple[Fact[ConsentRevoked], Fact[RevocationCandidateFlagged] | None] | None:
    """The latest brand-wide opt-out when a resolution wrote it (a "revoked" writes
    its opt-out and itself under one request), with the hold it resolved (None if
    that is not at hand); None for any other opt-out."""
    revoked = state.brand_revocation
    if revoked is None or not state.resolutions:
        return None
    said = (revoked.event.request_id, revoked.event.request_fingerprint)
    for resolution in state.resolutions.values():
        event = resolution.event
        if (event.request_id, event.request_fingerprint) == said:
            return revoked, state.candidates.get(str(event.candidate_event_id))
    return None


def held_asked(state: SubscriberState) -> int | None:
    """``Digest.brand_revocation_asked`` of ``state``: the time of the hold that the
    resolution which wrote the latest brand-wide opt-out resolved, or None."""
    found = _resolved_hold(state)
    if found is None:
        return None
    revoked, held = found
    # The hold's own time; the revocation's, if the hold is not at hand.
    return micros(held.at if held is not None else revoked.at)


def held_imported(state: SubscriberState) -> bool:
    """``Digest.brand_revocation_imported`` of ``state``: the latest brand-wide opt-out
    was imported, or a review recorded it for an import's opt-out held for its
    details (``RevocationCandidateFlagged.imported``): either way another platform
    received it and owed its confirmation."""
    revoked = state.brand_revocation
    if revoked is None:
        return False
    if revoked.event.imported:
        return True
    found = _resolved_hold(state)
    return found is not None and found[1] is not None and found[1].event.imported


def digest_of(state: SubscriberState) -> Digest:
    """The digest of a folded state."""
    held = state.campaigns
    resumed = state.brand_resume
    campaigns = {name: _campaign_digest(held[name], resumed) for name in sorted(held)}
    age = state.age
    location = state.location
    supplied = located_region(location)
    # ledger.phone.time_zones and ledger.regions.candidate_regions, from one reading
    number = places(state.phone) if state.phone else None
    return built(
        Digest,
        (
            state.brand,
            zones_with_region(number.zones if number else (), supplied),
            (
                tuple(
                    [
                        Pending(
                            c.event_id,
                            c.event.text,
                            micros(revocation_due(c.at)),
                            c.event.unattributed,
                            c.event.imported,
                            c.event.refused,
                            c.event.reused_id,
                            c.event.provider_reported,
                        )
                        for c in state.pending_candidates()
                    ]
                )
                if state.candidates
                else ()
            ),
            _mark(state.brand_revocation),
            _mark(state.brand_resume),
            None
            if age is None
            else Age(age.event_id, age.event.verified_21_plus, age.event.date_of_birth),
            _mark(state.last_inbound),
            (
                tuple(
                    [
                        _sent(s)
                        for s in state.brand_sent
                        if s.kind is MessageKind.OPT_OUT_CONFIRMATION
                    ]
                )
                if state.brand_sent
                else ()
            ),
            campaigns,
            with_supplied(number.regions if number else (), supplied),
            None if location is None else Located(supplied, location.event_id),
            _mark(state.erased),
            _said(state.brand_revocation_said, state.brand_revocation),
            _stated(state.brand_resume),
            held_asked(state),
            held_imported(state),
        ),
    )


EVERY_BRANDS_HOLD = "[held for every brand]"
"""What a pending candidate of ``ANY_BRAND`` shows as its text once added to a brand's
digest (``with_phone_wide``): every brand is denied by it, but its words may name the
brand the person answered, and one an older version stored in the clear is not sealed."""


def with_phone_wide(digest: Digest | None, phone_wide: Digest) -> Digest | None:
    """``digest`` (a phone's towards one brand, None if it has none) with the pending
    candidates of the phone's ``ANY_BRAND`` digest added: a STOP whose brand is unknown
    concerns every brand. Only those: nothing else recorded under that key speaks for
    a brand, and not their words (``EVERY_BRANDS_HOLD``), which answers quote. None
    when there is nothing to add to a missing digest."""
    extra = tuple([p._replace(text=EVERY_BRANDS_HOLD) for p in phone_wide.pending])
    if not extra:
        return digest
    if digest is None:
        return Digest(zones=phone_wide.zones, pending=extra, regions=phone_wide.regions)
    return digest._replace(pending=tuple(sorted((*digest.pending, *extra))))
