"""The digest: what the policy reads about one phone and brand, and nothing else.

A folded ``SubscriberState`` keeps whole events, proof of consent included, so an
auditor can be shown them. The policy needs far less: for each fact it reads, when
it happened, where the ledger put it and its id, plus a tier, a text or a date of
birth here and there, and the number's time zones. ``digest_of`` flattens a state
into exactly that, in plain tuples, ints and strings: cheap to store beside the
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
from typing import Any, Final, NamedTuple

from ledger.deadlines import revocation_due
from ledger.events import MessageKind
from ledger.phone import time_zones
from ledger.regions import candidate_regions, zones_with_region
from ledger.state import Fact, SentRecord, SubscriberState, located_region

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_new = tuple.__new__
_MICROSECOND = timedelta(microseconds=1)

Mark = tuple[int, int, str]
"""One fact as the policy sees it: (occurred at, ledger offset, event id)."""
AT: Final = 0
OFFSET: Final = 1
ID: Final = 2
"""Indexes into a ``Mark``. ``mark[:2]`` is its world-order key (time, then offset)."""


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
    """The ``ConsentTier`` of the grant (0 without one)."""
    revocation: Mark | None = None
    """This campaign's own latest opt-out (a brand-wide one is on the ``Digest``)."""
    resume: Mark | None = None
    reconfirmation: Mark | None = None
    sent: tuple[Mark, ...] = ()
    """Counted sends within the longest cap window, oldest first."""
    last_sent_at: int | None = None
    """When the latest counted send ever went out."""
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


EMPTY_CAMPAIGN = CampaignDigest()


class Age(NamedTuple):
    event_id: str
    verified_21_plus: bool
    date_of_birth: str


Pending = tuple[str, str, int, bool]
"""A candidate awaiting review: (event id, text, when it becomes overdue, whether it
is an unattributed opt-out). Overdue is ten business days after it was flagged
(``ledger.deadlines.revocation_due``), worked out when digested, so the policy
only compares."""
PENDING_ID: Final = 0
PENDING_DUE: Final = 2
PENDING_UNATTRIBUTED: Final = 3


class Digest(NamedTuple):
    """Everything ``ledger.policy`` reads about one phone towards one brand."""

    brand: str = ""
    zones: tuple[str, ...] = ()
    """The number's time zones (``ledger.phone.time_zones``), found once when digested."""
    pending: tuple[Pending, ...] = ()
    """Replies that read like an opt-out and await review, by id."""
    brand_revocation: Mark | None = None
    brand_resume: Mark | None = None
    age: Age | None = None
    last_inbound: Mark | None = None
    confirmations: tuple[Mark, ...] = ()
    """Opt-out confirmations sent (kept as long as any send is), oldest first."""
    campaigns: Mapping[str, tuple[Any, ...]] = {}
    """Each campaign's ``CampaignDigest`` by name; read them with ``campaign``. A
    decoded digest holds the plain tuples of their fields: typing each when it is
    asked for, not every one when decoded, is a good part of a batch's decoding."""

    regions: tuple[str, ...] = ()
    """The US states the recipient may be in (``ledger.regions.candidate_regions``):
    the number's and the one the subscriber gave; each state's rules apply."""
    located: tuple[str, str] | None = None
    """(state, event id) of the opt-in that said where the subscriber is, if any."""

    def campaign(self, name: str) -> CampaignDigest:
        fields = self.campaigns.get(name)
        return EMPTY_CAMPAIGN if fields is None else _new(CampaignDigest, fields)


def _mark(fact: Fact[Any] | None) -> Mark | None:
    if fact is None:
        return None
    return (micros(fact.event.occurred_at), fact.position.offset, fact.event_id)


def _sent_mark(record: SentRecord | None) -> Mark | None:
    if record is None:
        return None
    return (micros(record.at), record.fact.position.offset, record.event_id)


def digest_of(state: SubscriberState) -> Digest:
    """The digest of a folded state."""
    campaigns = {}
    for name, c in sorted(state.campaigns.items()):
        campaigns[name] = CampaignDigest(
            grant=_mark(c.grant),
            tier=int(c.grant.event.tier) if c.grant is not None else 0,
            revocation=_mark(c.revocation),
            resume=_mark(c.resume),
            reconfirmation=_mark(c.reconfirmation),
            sent=tuple((micros(s.at), s.fact.position.offset, s.event_id) for s in c.sent),
            last_sent_at=micros(c.last_sent.at) if c.last_sent is not None else None,
            last_disclosed_at=(
                micros(c.last_disclosed.at) if c.last_disclosed is not None else None
            ),
            help_request=_mark(c.help_request),
            help_reply=_sent_mark(c.help_reply),
            opt_in_confirmation=_sent_mark(c.opt_in_confirmation),
            proof_missing=(
                tuple(c.grant.event.proof.template_missing(c.grant.event.method))
                if c.grant is not None
                else ()
            ),
        )
    age = state.age
    location = state.location
    supplied = located_region(location)
    zones = time_zones(state.phone) if state.phone else ()
    return Digest(
        brand=state.brand,
        zones=zones_with_region(zones, supplied),
        pending=tuple(
            (c.event_id, c.event.text, micros(revocation_due(c.at)), c.event.unattributed)
            for c in state.pending_candidates()
        ),
        brand_revocation=_mark(state.brand_revocation),
        brand_resume=_mark(state.brand_resume),
        age=None
        if age is None
        else Age(age.event_id, age.event.verified_21_plus, age.event.date_of_birth),
        last_inbound=_mark(state.last_inbound),
        confirmations=tuple(
            (micros(s.at), s.fact.position.offset, s.event_id)
            for s in state.brand_sent
            if s.kind is MessageKind.OPT_OUT_CONFIRMATION
        ),
        campaigns=campaigns,
        regions=candidate_regions(state.phone, supplied),
        located=None if location is None else (supplied, location.event_id),
    )


def with_phone_wide(digest: Digest | None, phone_wide: Digest) -> Digest | None:
    """``digest`` (a phone's towards one brand, None if it has none) with the pending
    candidates of the phone's ``ANY_BRAND`` digest added: a STOP whose brand is unknown
    concerns every brand. Only those: nothing else recorded under that key speaks for
    a brand. None when there is nothing to add to a missing digest."""
    extra = phone_wide.pending
    if not extra:
        return digest
    if digest is None:
        return Digest(zones=phone_wide.zones, pending=extra, regions=phone_wide.regions)
    return digest._replace(pending=tuple(sorted((*digest.pending, *extra))))
