"""The facts the ledger records, named in the past tense and never changed.

Events are frozen dataclasses. Each has its own ``event_id`` (derived from the
client's request id, so a retried write is the same fact) and ``occurred_at``,
when the fact happened in the world. An event belongs to no aggregate and has no
version: appends never depend on what was read before them, so the ledger orders
facts (``Recorded.position``) and the fold decides what a late or contradictory
one means. Events do not validate themselves: a fact that was accepted once must
replay forever, so the rules for accepting one live in ``ledger.commands``.
Old versions of an event class are upcast on read (``ledger.upcasting``).
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from ledger.campaigns import LEGAL_AGE, PROOF_TEMPLATE_FIELDS, CampaignPolicy
from ledger.validation import proof_field_lacking, says_nothing

EVENT_ID_NAMESPACE = uuid.UUID("6f1c1f2e-8f3b-4d6a-9a53-6b7f4c0e2d11")
"""Namespace for deriving an event id from a client request id (uuid5)."""

ANY_BRAND = "*"
"""The brand key of facts about a phone whose brand is unknown (a STOP to a number
no campaign sends from, from a caller that may act for any brand). Not a valid
brand name, so no brand can own it; every brand's CanSend reads its candidates
(``ledger.digest.with_phone_wide``). The same "*" means every brand in tokens files."""

REFUSED_PREFIX = "refused-"
"""How the request id of a live opt-out's hold begins (``ledger.commands``
``HoldRefusedOptOut.via``): ``RevocationCandidateFlagged.refused`` tells it by that."""
REUSED_ID_PREFIX = f"{REFUSED_PREFIX}id-"
"""How it begins when the opt-out was refused for a request id used before
(``HoldRefusedOptOut.reused_id``; the rest is hex, so no other hold's begins so)."""
PROVIDER_OPT_OUT_PREFIX = "provider-opt-out-"
"""How the request id of a hold placed for a delivery outcome whose error code says
the recipient opted out at the provider begins (``ledger.commands.provider_opt_out_hold``):
``RevocationCandidateFlagged.provider_reported`` tells it by that."""


_Frozen = TypeVar("_Frozen")


def evolved(obj: _Frozen, **changes: Any) -> _Frozen:
    """``dataclasses.replace`` for events and the frozen dataclasses they hold, by
    copying the instance's fields rather than calling ``__init__`` again: stamping
    and sealing replace every event of a 1,000-record call, and ``replace`` of an
    event of 17 fields cost more than building it. None of these classes has a
    ``__post_init__`` (``tests/unit/test_events.py`` holds them to that), so the
    copy is all that ``replace`` would do. A name that is no field is refused, as
    ``replace`` refuses it."""
    unknown = changes.keys() - obj.__dataclass_fields__.keys()  # type: ignore[attr-defined]
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    new = object.__new__(type(obj))
    fields = new.__dict__
    fields.update(obj.__dict__)
    fields.update(changes)
    return new


def event_id_for(
    request_id: str, index: int = 0, brand: str = "", fingerprint: str = ""
) -> uuid.UUID:
    """The id of the ``index``-th event a request writes: the same request, the same ids.

    A request id is the client's, unique only among its own requests, so the ids are
    scoped by the brand the request is for, and by the ``fingerprint`` of everything
    the request says (``ledger.commands.request_fingerprint``): two tenants that both
    send request id "r1", or one that sends it twice for two different requests,
    write different facts, never one request's retry of the other. The projection
    stores each id once, so two facts under one id would lose one of them."""
    scoped = f"{brand}/{request_id}" if brand else request_id
    if fingerprint:
        scoped = f"{scoped}/{fingerprint}"
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{scoped}/{index}")


class ConsentTier(enum.IntEnum):
    """How far a consent reaches; a higher tier includes the lower ones."""

    CONVERSATIONAL = 1
    INFORMATIONAL = 2
    PROMOTIONAL = 3


class CollectionMethod(enum.Enum):
    WEB_FORM = "web_form"
    KEYWORD_REPLY = "keyword_reply"
    PAPER = "paper"
    VERBAL = "verbal"
    API_IMPORT = "api_import"


class ListSource(enum.Enum):
    """Where the number came from. Only first-party collection is consent."""

    FIRST_PARTY = "first_party"
    PURCHASED = "purchased"
    RENTED = "rented"
    SHARED = "shared"


class RevocationChannel(enum.Enum):
    KEYWORD = "keyword"
    FREE_TEXT = "free_text"
    WEB = "web"
    CALL = "call"
    API = "api"


class MessageKind(enum.Enum):
    """What a message is. A kind other than a regular message escapes some rule only
    when the fact that earns it is there (``ledger.policy``): a reply owed to the
    person's own STOP, HELP or START, or a reply inside a conversation they began."""

    REGULAR = "regular"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    HELP_REPLY = "help_reply"
    RECONFIRMATION_REQUEST = "reconfirmation_request"
    CONVERSATION_REPLY = "conversation_reply"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"
    """The reply owed to a START (or UNSTOP, YES) that resumed a prior consent."""


class DeliveryOutcome(enum.Enum):
    """What the SMS provider reported became of a message it was handed."""

    DELIVERED = "delivered"
    FAILED = "failed"
    """The provider could not send it (a carrier or the provider refused it)."""
    UNDELIVERABLE = "undeliverable"
    """Sent, but the handset could not be reached (Twilio's ``undelivered``)."""

    @property
    def is_error(self) -> bool:
        """Whether it counts towards the error rate carriers watch."""
        return self is not DeliveryOutcome.DELIVERED


class CandidateResolution(enum.Enum):
    REVOKED = "revoked"
    DISMISSED = "dismissed"


@dataclass(frozen=True)
class ConsentProof:
    """What an auditor or a carrier asks for to prove an opt-in.

    The consent wording is kept verbatim, or as its SHA-256 and version when the
    text lives in a document store; the screenshot likewise by reference and hash.
    """

    registered_at: datetime
    name: str = ""
    email: str = ""
    postal_address: str = ""
    ip_address: str = ""
    collection_detail: str = ""
    form_url: str = ""
    consent_text: str = ""
    consent_text_sha256: str = ""
    consent_text_version: str = ""
    screenshot_ref: str = ""
    screenshot_sha256: str = ""
    region: str = ""
    """The USPS code of the state the subscriber gave as theirs (empty: not given).
    State telemarketing rules follow the person: ``ledger.regions``."""

    def template_missing(self, method: CollectionMethod) -> list[str]:
        """The ``PROOF_TEMPLATE_FIELDS`` this proof leaves empty, as ``proof.<name>``.
        For a method other than a web form, ``collection_detail`` stands for the IP
        address and the URL, as the template allows ("or other method of
        collection", "or details around other collection methods")."""
        detail = method is not CollectionMethod.WEB_FORM and not proof_field_lacking(
            "collection_detail", self.collection_detail
        )
        return [
            shown
            for name, shown in _TEMPLATE_NAMES
            if proof_field_lacking(name, getattr(self, name))
            and not (detail and name in ("ip_address", "form_url"))
        ]

    def missing_fields(self, method: CollectionMethod) -> list[str]:
        """Names of the proof fields ``method`` requires that are empty, or say
        nothing (``ledger.validation.says_nothing``: a placeholder such as "N/A"). A
        typed field that does not parse is refused for itself (``check_proof_value``)."""
        missing: list[str] = []
        if says_nothing(self.consent_text) and (
            says_nothing(self.consent_text_sha256)
            or says_nothing(self.consent_text_version, "consent_text_version")
        ):
            missing.append("proof.consent_text")
        if method is CollectionMethod.WEB_FORM:
            for name in ("name", "ip_address", "form_url", "screenshot_ref", "screenshot_sha256"):
                if says_nothing(getattr(self, name), name):
                    missing.append(f"proof.{name}")
        elif method in (CollectionMethod.PAPER, CollectionMethod.VERBAL):
            for name in ("name", "collection_detail"):
                if says_nothing(getattr(self, name), name):
                    missing.append(f"proof.{name}")
        elif says_nothing(self.collection_detail):
            # Keyword replies name the inbound message; imports name the original source.
            missing.append("proof.collection_detail")
        return missing


_TEMPLATE_NAMES = tuple((name, f"proof.{name}") for name in PROOF_TEMPLATE_FIELDS)
"""Each template field with the name ``template_missing`` reports it by, made once."""


@dataclass(frozen=True)
class Sealed:
    """Personal data encrypted with the key of the event's subject (phone and brand),
    held outside the ledger (``ledger.ports.SubjectKeys``). The ledger keeps only
    this: once the key is destroyed, the event still says everything but who.

    ``fields`` names what it holds (``ledger.personal_data.PERSONAL_FIELDS``); the
    event shows ``SEALED`` in each of them until it is opened."""

    key_id: str
    nonce: bytes
    ciphertext: bytes
    fields: tuple[str, ...]


@dataclass(frozen=True)
class LedgerEvent:
    """A fact in the ledger, ``occurred_at`` in the world.

    ``recorded_by`` names who asked for it to be recorded (the caller's token): the
    record's provenance, not part of the fact, so it takes no part in comparing
    events and no rule reads it.

    ``request_id`` and ``request_fingerprint`` name the request that wrote it: the
    client's id (scoped by the brand) and the digest of everything the request said
    (``ledger.commands.request_fingerprint``). A view keeps the first request that
    used an id and takes no event of another request under that id as a fact.
    Empty on facts written before they were recorded. Provenance too: they take no
    part in comparing events.
    """

    EVENT_TYPE: ClassVar[str] = ""
    event_id: uuid.UUID
    occurred_at: datetime
    _: KW_ONLY
    recorded_by: str = field(default="", compare=False)
    request_id: str = field(default="", compare=False)
    request_fingerprint: str = field(default="", compare=False)
    sealed: Sealed | None = field(default=None, compare=False)
    """The event's personal data, encrypted with its subject's key
    (``ledger.personal_data``); None when it carries its personal data in the clear
    (written before sealing, or it has none). How it is stored, not what it says,
    so it takes no part in comparing events."""


@dataclass(frozen=True)
class SubscriberEvent(LedgerEvent):
    """A fact about one phone number and one brand; keyed by phone in the ledger."""

    _: KW_ONLY
    phone: str
    brand: str


@dataclass(frozen=True)
class CampaignEvent(LedgerEvent):
    """A fact about a brand's campaign definition; kept in its own topic."""

    _: KW_ONLY
    brand: str
    campaign: str


def _in_the_clear(state: dict[str, Any]) -> None:
    """Upcast v1 to v2 of an event class with personal data
    (``ledger.personal_data.PERSONAL_FIELDS``): v2 may hold it sealed
    (``LedgerEvent.sealed``), v1 held it in the clear. A reader that knows only v1
    refuses a v2 event rather than take ``SEALED`` for what the person wrote."""
    state["sealed"] = None


@dataclass(frozen=True)
class ConsentGranted(SubscriberEvent):
    EVENT_TYPE = "ConsentGranted"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    campaign: str
    tier: ConsentTier
    method: CollectionMethod
    proof: ConsentProof
    source: ListSource = ListSource.FIRST_PARTY
    stated_at: datetime | None = None
    """When the opt-in said it happened, kept when that was ahead of the service's
    clock and it took its place when recorded instead (as ``ConsentRevoked.stated_at``);
    None otherwise, and on opt-ins recorded before this was kept. It outranks an
    opt-out only if it is the later by this time as well as by place
    (``ledger.policy.standing``)."""


@dataclass(frozen=True)
class ConsentRevoked(SubscriberEvent):
    """Consent withdrawn; ``campaign`` None means every campaign of the brand (STOPALL)."""

    EVENT_TYPE = "ConsentRevoked"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    campaign: str | None
    channel: RevocationChannel
    text: str = ""
    in_reply_to: str = ""
    stated_at: datetime | None = None
    """When the opt-out said it happened, kept when that was ahead of the service's
    clock and it took its place when recorded instead (``ledger.commands.consent_time``);
    None when it took its place at its own time, and on opt-outs recorded before this
    was kept. A consent stated no later than this cannot outrank it: it is refused
    (``ledger.commands.check_consent_after_opt_outs``), and one recorded all the same
    loses to it in the fold (``ledger.state.stated_key``)."""
    imported: bool = False
    """Recorded by an import (``services.usecases.imports``): an opt-out another
    platform received, whose one confirmation was that platform's to send, so this
    service allows none for it (``ledger.policy``). False on live opt-outs, and on
    opt-outs imported before this was kept."""

    @property
    def stated(self) -> datetime:
        """When the opt-out said it happened: ``stated_at``, else ``occurred_at``."""
        return self.occurred_at if self.stated_at is None else self.stated_at

    @property
    def brand_wide(self) -> bool:
        return self.campaign is None


@dataclass(frozen=True)
class ConsentReconfirmed(SubscriberEvent):
    EVENT_TYPE = "ConsentReconfirmed"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    campaign: str
    channel: RevocationChannel
    detail: str = ""


@dataclass(frozen=True)
class ConsentResumed(SubscriberEvent):
    """START/UNSTOP/YES after a revocation: restores the prior grant(s) in scope."""

    EVENT_TYPE = "ConsentResumed"
    campaign: str | None
    inbound_message_id: str = ""
    stated_at: datetime | None = None
    """When the START said it happened, kept when that was ahead of the service's
    clock (as ``ConsentGranted.stated_at``); None otherwise."""


@dataclass(frozen=True)
class ReliedAnswer:
    """The ``CanSend`` answer a sender says it relied on for a send, as it was given:
    the view's consistency token, whether it allowed the send, its reason (a
    ``ledger.policy.Reason`` value) and the ids of the events it named. What the
    sender claims, not a fact the ledger checked: the compliance sweep
    (``ledger.sweep``) sets it beside the answer the ledger gives for that moment."""

    consistency_token: str = ""
    allowed: bool = False
    reason: str = ""
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class MessageSent(SubscriberEvent):
    EVENT_TYPE = "MessageSent"
    message_id: str
    campaign: str
    kind: MessageKind
    included_opt_out_language: bool = False
    identified_sender: bool = False
    exempt: bool | None = None
    """Whether the send earned its kind's exemption from the caps when it was recorded
    (``ledger.policy.earns_exemption``): a reply of a kind that escapes them counts like
    any other message unless what earns it was there. None on sends recorded before
    that was decided: their kind alone says (``ledger.state.COUNTED_KINDS``)."""
    relied_on: ReliedAnswer | None = None
    """The answer the sender relied on; None when it said of none (it sent without
    asking, or was recorded before senders could say)."""
    from_number: str = ""
    """The E.164 number the message went out from; empty when the sender did not say
    (campaign health then counts it under no sending number)."""


SENT_MESSAGE_FIELDS = (
    "campaign",
    "kind",
    "occurred_at",
    "included_opt_out_language",
    "identified_sender",
    "relied_on",
    "from_number",
)
"""What a ``MessageSent`` says of its message, beyond the provider's message id, the
number and the brand that name it: the request's own fields (its ids, who recorded
it) and what the service worked out (``exempt``) are not the message's."""


def send_differences(first: MessageSent, again: MessageSent) -> list[str]:
    """The fields in which ``again``, a send of the message ``first`` recorded (the
    same provider message id, number and brand), says something else of it."""
    return [f for f in SENT_MESSAGE_FIELDS if getattr(first, f) != getattr(again, f)]


def _said(value: Any) -> Any:
    """One of ``SENT_MESSAGE_FIELDS`` as JSON: an instant in UTC, a kind by value."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, ReliedAnswer):
        return [value.consistency_token, value.allowed, value.reason, list(value.evidence)]
    return value


def message_content(sent: MessageSent) -> str:
    """What ``sent`` says of its message (``SENT_MESSAGE_FIELDS``) as canonical JSON,
    for a send's claim of its message id: a copy that meets the claim is compared
    with it before the first send can be read from the view."""
    said = {f: _said(getattr(sent, f)) for f in SENT_MESSAGE_FIELDS}
    return json.dumps(said, sort_keys=True, separators=(",", ":"))


def message_contents(sends: Iterable[MessageSent]) -> list[str]:
    """``message_content`` of each of ``sends``, written once for the sends that say the
    same of their messages: a call's messages mostly share a campaign, a kind, a time
    and the answer relied on, and the content holds no number or message id. Sends
    that ``send_differences`` finds no difference between share one."""
    written: dict[tuple[Any, ...], str] = {}
    out = []
    for sent in sends:
        said = tuple([getattr(sent, f) for f in SENT_MESSAGE_FIELDS])
        content = written.get(said)
        if content is None:
            content = written[said] = message_content(sent)
        out.append(content)
    return out


def content_differences(content: str, again: MessageSent) -> list[str]:
    """``send_differences`` of ``again`` from a send known by its ``message_content``."""
    first = json.loads(content)
    return [f for f in SENT_MESSAGE_FIELDS if first.get(f) != _said(getattr(again, f))]


@dataclass(frozen=True)
class DeliveryOutcomeReported(SubscriberEvent):
    """What the SMS provider reported became of a recorded ``MessageSent``: delivered,
    failed or undeliverable, with the provider's error code. ``campaign`` is the
    send's, copied when the outcome was recorded, so a reader of one campaign's
    events finds it without looking the send up. A later report on one message
    stands over an earlier one (``ledger.health``)."""

    EVENT_TYPE = "DeliveryOutcomeReported"
    message_id: str
    campaign: str
    outcome: DeliveryOutcome
    error_code: str = ""


@dataclass(frozen=True)
class InboundMessageReceived(SubscriberEvent):
    """A text the person sent us; opens a conversation for the brand."""

    EVENT_TYPE = "InboundMessageReceived"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    message_id: str
    to_number: str
    body: str
    campaign: str | None = None
    intent: str = ""
    """How the text was read when it came (an ``ledger.keywords.Intent`` value): a HELP
    is owed its reply for as long as the record says it was one, whatever later rules
    would read. Empty on texts recorded before the reading was kept."""
    reply: str = ""
    """The reply the text was owed when it was recorded (a ``ledger.commands.ReplyKind``
    value): its retry is told the same, whatever was recorded since, even once the
    view that kept what its first answer told is rebuilt from the ledger. Empty on
    texts recorded before it was kept."""


@dataclass(frozen=True)
class RevocationCandidateFlagged(SubscriberEvent):
    """Free text that reads like an opt-out; blocks sending until resolved.

    Also an opt-out that no defined campaign could take (``unattributed``): a STOP
    to a number no campaign sends from, or a ``RecordOptOut`` naming a campaign that
    is not defined. Refusing those would lose them (gateways do not retry), so they
    are recorded as candidates that deny as revocations until someone resolves them.
    """

    EVENT_TYPE = "RevocationCandidateFlagged"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    inbound_message_id: str
    text: str
    to_number: str = ""
    """The number an unattributed STOP reached (no campaign sent from it)."""
    campaign: str | None = None
    """The campaign an unattributed opt-out named, which was not defined."""
    unattributed: bool = False
    """A definite opt-out whose campaign is unknown: it denies every campaign of its
    brand (of every brand, under ``ANY_BRAND``) until resolved."""
    stated_at: datetime | None = None
    """When the words held said they happened, kept when that was ahead of the
    service's clock and the candidate took its place when recorded instead (as
    ``ConsentRevoked.stated_at``); None otherwise, and on candidates recorded before
    this was kept. A "revoked" resolution takes effect no earlier than ``stated``."""
    from_import: bool = False
    """An import's opt-out naming a campaign not defined, kept ``unattributed``
    (``services.usecases.imports``): another platform received it and owed its one
    confirmation. False on every other candidate, and on those recorded before this
    was kept; ``imported`` tells an import's held opt-out by its other fields."""

    @property
    def stated(self) -> datetime:
        """When the words held said they happened: ``stated_at``, else ``occurred_at``."""
        return self.occurred_at if self.stated_at is None else self.stated_at

    @property
    def imported(self) -> bool:
        """An import's opt-out kept for review, not a reply: one naming a campaign
        not defined (``from_import``), or one refused for its details
        (``ledger.commands.held_opt_out``): a candidate neither unattributed nor
        flagged from a text, which always has a message id, nor ``refused``, nor
        ``provider_reported``."""
        return self.from_import or (
            not self.inbound_message_id
            and not self.unattributed
            and not self.refused
            and not self.provider_reported
        )

    @property
    def refused(self) -> bool:
        """A live opt-out (``RecordOptOut``, an inbound STOP) refused for its details
        and held for review: told by its request id, which the service derives
        (``REFUSED_PREFIX``); no client's request records a candidate without a
        message id that is not unattributed."""
        return (
            not self.inbound_message_id
            and not self.unattributed
            and self.request_id.startswith(REFUSED_PREFIX)
        )

    @property
    def reused_id(self) -> bool:
        """A live opt-out held because its request id was used before for another
        request (a client's bug), not for a detail: ``refused``, and told by its
        request id too (``REUSED_ID_PREFIX``)."""
        return self.refused and self.request_id.startswith(REUSED_ID_PREFIX)

    @property
    def provider_reported(self) -> bool:
        """Held because the SMS provider reported the recipient opted out there (a
        delivery outcome's error code, Twilio's 21610): told by its request id, which
        the service derives (``PROVIDER_OPT_OUT_PREFIX``)."""
        return (
            not self.inbound_message_id
            and not self.unattributed
            and self.request_id.startswith(PROVIDER_OPT_OUT_PREFIX)
        )


@dataclass(frozen=True)
class RevocationCandidateResolved(SubscriberEvent):
    EVENT_TYPE = "RevocationCandidateResolved"
    candidate_event_id: uuid.UUID
    resolution: CandidateResolution
    resolved_by: str = ""

    @property
    def lifts_hold(self) -> bool:
        """Whether it releases the candidate's block on sending. A "revoked" under
        ``ANY_BRAND`` does not: its ConsentRevoked is under no real brand, so lifting
        the hold, every brand's only denial, would let each send again. Refused since
        34200de, such resolutions recorded before it stay in the ledger."""
        return not (self.brand == ANY_BRAND and self.resolution is CandidateResolution.REVOKED)


@dataclass(frozen=True)
class AgeVerified(SubscriberEvent):
    EVENT_TYPE = "AgeVerified"
    method: str
    date_of_birth: str = ""
    verified_21_plus: bool = False


def is_21_plus(verified_21_plus: bool, date_of_birth: str, at: datetime | date) -> bool:
    """Whether a verification says the person is 21 or older on ``at``'s date (for a
    datetime, its date where it is given; the policy passes the person's local date).

    A date of birth, when given, decides: a record that also says "verified 21+"
    for someone it shows to be younger proves nothing (fail closed)."""
    if not date_of_birth:
        return verified_21_plus
    born = datetime.fromisoformat(date_of_birth).date()
    today = at.date() if isinstance(at, datetime) else at
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return years >= LEGAL_AGE


@dataclass(frozen=True)
class SubscriberLocated(SubscriberEvent):
    """Where the subscriber said they are, after the opt-in or without one: the USPS
    code of a US state (``ledger.regions``). The latest such word, this or an opt-in's
    ``proof.region``, is the one the policy adds to the number's own state."""

    EVENT_TYPE = "SubscriberLocated"
    class_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_in_the_clear)
    region: str
    detail: str = ""


@dataclass(frozen=True)
class SubjectErased(SubscriberEvent):
    """The personal data of a phone towards a brand was erased: its key destroyed
    (``ledger.personal_data``), after the retention period and with no legal hold
    (``ledger.retention``). Every earlier fact of the subject stays in the ledger,
    its personal data unreadable; none of them is consent any more
    (``ledger.state``): only a fresh opt-in after it allows a send."""

    EVENT_TYPE = "SubjectErased"
    requested_by: str = ""
    reference: str = ""
    """The request's own reference (a ticket number), free text, no personal data."""
    retained_until: datetime | None = None
    """When the retention period had ended: the erasure came after it."""
    key_ids: tuple[str, ...] = ()
    """The subject's keys it destroys. A fact sealed with one is erased by it wherever
    it was placed: a write sealed before the erasure may be appended after it."""


@dataclass(frozen=True)
class LegalHoldPlaced(SubscriberEvent):
    """A legal hold on a phone's records towards a brand: no erasure while it stands."""

    EVENT_TYPE = "LegalHoldPlaced"
    hold_id: str
    reason: str = ""
    placed_by: str = ""


@dataclass(frozen=True)
class LegalHoldReleased(SubscriberEvent):
    EVENT_TYPE = "LegalHoldReleased"
    hold_id: str
    released_by: str = ""


@dataclass(frozen=True)
class CampaignDefined(CampaignEvent):
    EVENT_TYPE = "CampaignDefined"
    policy: CampaignPolicy


@dataclass(frozen=True)
class CampaignPolicyChanged(CampaignEvent):
    EVENT_TYPE = "CampaignPolicyChanged"
    policy: CampaignPolicy


BRAND_SETTINGS = ""
"""The campaign key of a brand's own settings (``BrandPolicySet``) on the campaign
stream. Not a valid campaign name, so no campaign can own it."""


@dataclass(frozen=True)
class BrandPolicySet(CampaignEvent):
    """A brand's setting of its own, for every campaign of the brand, from when it
    occurred. ``campaign`` is ``BRAND_SETTINGS``.

    ``revoke_all``: honour 47 CFR 64.1200(a)(10)'s "revoke-all" rule before it is in
    force (``ledger.policy.REVOKE_ALL_EFFECTIVE``): an opt-out of one campaign of the
    brand is one of all. The fold reads it as one-way (once on, on): a setting can
    only make the rule apply earlier, never lift it."""

    EVENT_TYPE = "BrandPolicySet"
    revoke_all: bool = False


SUBSCRIBER_EVENT_TYPES: tuple[type[SubscriberEvent], ...] = (
    ConsentGranted,
    ConsentRevoked,
    ConsentReconfirmed,
    ConsentResumed,
    MessageSent,
    InboundMessageReceived,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    AgeVerified,
    SubscriberLocated,
    DeliveryOutcomeReported,
    SubjectErased,
    LegalHoldPlaced,
    LegalHoldReleased,
)
CAMPAIGN_EVENT_TYPES: tuple[type[CampaignEvent], ...] = (
    CampaignDefined,
    CampaignPolicyChanged,
    BrandPolicySet,
)
EVENT_TYPES: dict[str, type[LedgerEvent]] = {
    cls.EVENT_TYPE: cls for cls in (*SUBSCRIBER_EVENT_TYPES, *CAMPAIGN_EVENT_TYPES)
}


@dataclass(frozen=True, order=True)
class LedgerPosition:
    """Where the ledger put an event: a partition and the offset within it."""

    partition: int
    offset: int


@dataclass(frozen=True)
class Recorded:
    """An event as the ledger stored it: position and ``recorded_at`` stamped on."""

    event: LedgerEvent
    position: LedgerPosition
    recorded_at: datetime
    _: KW_ONLY
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    envelope: bytes | None = field(default=None, init=False, compare=False, repr=False)
    """The event exactly as the wire format encodes it, when the ledger read it so
    (``as_read``); else None. Not a constructor argument, so ``replace`` never
    carries it to a ``Recorded`` of another event (an erased or opened copy)."""

    @classmethod
    def as_read(
        cls, event: LedgerEvent, position: LedgerPosition, recorded_at: datetime, envelope: bytes
    ) -> Recorded:
        """A stored event with the bytes it was stored as, which must be what encoding
        ``event`` gives: a copy of it is then made from them, not encoded again."""
        recorded = cls(event, position, recorded_at)
        object.__setattr__(recorded, "envelope", envelope)  # frozen: set once, here
        return recorded

    @property
    def order_key(self) -> tuple[datetime, int]:
        """World order, ties broken by ledger order (one phone lives in one partition)."""
        return (self.event.occurred_at, self.position.offset)


MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future an ``occurred_at`` may be before it is refused."""
