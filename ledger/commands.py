"""Requests, named in the imperative, and the rules for turning them into facts.

``to_events`` validates a request completely before it builds anything, so a bad
request writes nothing. Event ids derive from the client's request id, the brand
and everything else the request says: a retry of the same request produces the
very same facts, which the ledger stores once, and a request id reused for another
request produces other facts, so neither is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

from ledger.campaigns import (
    PROHIBITED,
    Campaign,
    CampaignCategory,
    CampaignPolicy,
    category_of,
)
from ledger.errors import (
    DomainError,
    InvalidCampaignPolicy,
    InvalidPhoneNumber,
    InvalidRequest,
    MissingProofError,
    ProhibitedContent,
    PurchasedListError,
)
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    MAX_CLOCK_SKEW,
    PROVIDER_OPT_OUT_PREFIX,
    REFUSED_PREFIX,
    REUSED_ID_PREFIX,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentProof,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    ConsentTier,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    ListSource,
    MessageKind,
    MessageSent,
    ReliedAnswer,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
    SubscriberLocated,
    event_id_for,
    evolved,
    is_21_plus,
    send_differences,
)
from ledger.keywords import Intent, classify
from ledger.phone import NUMBERS_READ_IN, numbers_in, to_e164
from ledger.policy import ALLOWING_REASONS, Reason
from ledger.ports import ConsistencyToken
from ledger.regions import normalise_region
from ledger.state import SubscriberState
from ledger.validation import (
    EARLIEST_BIRTH,
    NAME_RULE,
    TEXT_LIMITS,
    Violations,
    check_identifier,
    check_length,
    check_not_too_early,
    check_proof_value,
    check_text,
    is_blank,
    is_name,
    says_nothing,
)

_SEPARATOR_RUN = re.compile(r"[._-]+")


def name_read(value: str) -> str:
    """What a person reads in a name: "spring-sale", "spring_sale", "spring.sale",
    "spring--sale" and "springsale" are one name to a reader, though five keys to the
    ledger. The last was a campaign of its own beside "spring-sale" (and "acmeco" a
    brand beside "acme-co"), though an opt-out under an unused "acmeco" is read as
    one for acme-co (``brands_meant``)."""
    return _SEPARATOR_RUN.sub("", value)


def brands_meant(brand: str, in_use: Sequence[str] | BrandsInUse) -> list[str]:
    """The brands of ``in_use`` that ``brand``, when no brand in use is so named, may
    be a spelling of: the same letters and digits once all else is dropped
    ("acme_co", "acmeco" and "acme.co" for "acme-co"; "ac\x00me", "ac\n*me" and
    "Acme!" for "acme"). An opt-out written under such a name stopped nothing the
    brand meant sends, so it is held under each of them instead."""
    if not isinstance(in_use, BrandsInUse):
        in_use = brands_in_use(tuple(in_use))
    return in_use.meant(brand)


class BrandsInUse:
    """The brands in use, each filed under the letters and digits a reader sees in it
    (``_letters_and_digits``), worked out once per list of them: an opt-out then
    costs the reading of its own brand and a lookup, not a reading of every brand."""

    __slots__ = ("_by_letters", "_names")

    def __init__(self, names: Sequence[str]) -> None:
        self._names = frozenset(names)
        by_letters: dict[str, list[str]] = {}
        for name in names:
            # A name with no letter or digit is meant by no brand (the same as "").
            if bare := _letters_and_digits(name):
                by_letters.setdefault(bare, []).append(name)
        self._by_letters = {bare: tuple(found) for bare, found in by_letters.items()}

    def meant(self, brand: str) -> list[str]:
        """``brands_meant(brand, <these brands>)``, in the order they were listed."""
        if brand in self._names:
            return []
        bare = _letters_and_digits(brand)
        return list(self._by_letters.get(bare, ())) if bare else []


@lru_cache(maxsize=8)
def brands_in_use(names: tuple[str, ...]) -> BrandsInUse:
    """``BrandsInUse`` of ``names``, kept for the few lists read last: the view lists
    the brands in use afresh for each opt-out, and the list seldom changes."""
    return BrandsInUse(names)


def brand_meant_refused(brand: str, meant: Sequence[str]) -> InvalidRequest:
    """The refusal, on ``brand``, of an opt-out under a brand no campaign was defined
    for that reads as the brands in use ``meant`` (``brands_meant``): recorded under
    its own name it stopped nothing they send, so it is refused and held under them."""
    return InvalidRequest(
        "brand",
        f"no brand {brand!r} is in use; it reads as brand"
        f" {' and as '.join(repr(b) for b in meant)}, which is: write the brand's"
        " name as defined",
    )


def _letters_and_digits(value: str) -> str:
    """The letters and digits a reader sees in ``value``, in lower case: compatibility
    forms as plain ones, and controls (Cc: a NUL or a line break an export left),
    format characters (Cf), noncharacters, invisible fillers, separators and symbols
    all dropped. For a name, that is the name without its '.', '_' and '-'."""
    plain = unicodedata.normalize("NFKC", value).lower()
    return "".join(ch for ch in plain if ch.isalnum() and not _invisible(ch))


def check_name(value: str, field_name: str) -> str:
    """Brand and campaign ids: short, lower-case, stable (they key the ledger)."""
    if not is_name(value or ""):
        raise InvalidRequest(field_name, NAME_RULE)
    return value


def check_time(value: datetime, now: datetime, field_name: str = "occurred_at") -> datetime:
    if value.tzinfo is None:
        raise InvalidRequest(field_name, "must carry a time zone")
    check_not_too_early(value, field_name)
    if value > now + MAX_CLOCK_SKEW:
        raise InvalidRequest(field_name, f"is in the future (more than {MAX_CLOCK_SKEW} ahead)")
    return value


def _check_proof(proof: ConsentProof) -> None:
    for name in _PROOF_TEXT:
        check_length(getattr(proof, name), f"proof.{name}")


_PROOF_TEXT = tuple(
    name.removeprefix("proof.") for name in TEXT_LIMITS if name.startswith("proof.")
)


REQUEST_ID_LIMIT = 128


def check_request_id(request_id: str) -> str:
    """``request_id``, or ``InvalidRequest`` on it if no write may name it: empty, too
    long, or no exact identifier."""
    if not request_id.strip():
        raise InvalidRequest("request_id", "is required (1-128 chars) so retries are idempotent")
    if len(request_id) > REQUEST_ID_LIMIT:
        # Said apart from a missing one: the caller has an id, one too long to keep.
        reason = f"must be at most {REQUEST_ID_LIMIT} characters, got {len(request_id):,}"
        raise InvalidRequest("request_id", reason)
    return check_identifier(request_id, "request_id")


_PHONES = ("phone", "from_phone", "to_phone")
_IDENTIFIERS = ("message_id", "in_reply_to", "error_code")


def check_fields(fields: Mapping[str, Any], now: datetime | None, found: Violations) -> None:
    """Check each field of a request by its name (a command's fields, or those a wire
    request could be read into), noting every violation in ``found``. ``now`` None
    skips what needs the time (a time too far ahead, a date of birth in the future).

    The builders below check what relates one field to another."""
    for name, value in fields.items():
        if value is None:
            continue
        if name == "request_id":
            found.check(check_request_id, value)
        elif name == "brand" and value == ANY_BRAND and "candidate_event_id" in fields:
            continue  # resolving a STOP whose brand was unknown: kept there (``_resolve``)
        elif name in ("brand", "campaign"):
            found.check(check_name, value, name)
        elif name in _PHONES or (name == "from_number" and value):
            found.check(to_e164, value, field=name)
        elif name in _IDENTIFIERS:
            if name == "message_id" and not value:
                found.add(InvalidRequest(name, "is required"))
            elif found.check(check_length, value, name) is not None:
                found.check(check_identifier, value, name)
        elif name == "candidate_event_id":
            found.check(_candidate_id, value)
        elif name == "date_of_birth":
            found.check(check_date_of_birth, value, now)
        elif isinstance(value, datetime):
            found.check(_check_time_at, value, now, name)
        elif isinstance(value, ConsentProof):
            for text in _PROOF_TEXT:
                if found.check(check_free_text, getattr(value, text), f"proof.{text}") is not None:
                    found.check(check_proof_value, text, getattr(value, text))
            found.check(_check_time_at, value.registered_at, now, "proof.registered_at")
        elif isinstance(value, CampaignPolicy):
            found.check(check_free_text, value.category, "policy.category")
            for i, number in enumerate(value.sender_numbers):
                found.check(to_e164, number, field=f"policy.sender_numbers[{i}]")
        elif name in TEXT_LIMITS and isinstance(value, str):
            found.check(check_free_text, value, name)


def _check_time_at(value: datetime, now: datetime | None, field_name: str) -> datetime:
    """``check_time``; without ``now``, what needs none (a time zone, not before 2000),
    so that a request refused for another field hears of its time as well."""
    if now is not None:
        return check_time(value, now, field_name)
    if value.tzinfo is None:
        raise InvalidRequest(field_name, "must carry a time zone")
    return check_not_too_early(value, field_name)


def check_free_text(value: str, field_name: str) -> str:
    """``check_length`` and ``ledger.validation.check_text``: no control characters."""
    return check_text(check_length(value, field_name), field_name)


def _candidate_id(value: str) -> uuid.UUID:
    return _event_id(value, "candidate_event_id")


def _event_id(value: str, field: str) -> uuid.UUID:
    # uuid.UUID reads "{...}", "urn:uuid:..." and hex without dashes alike: only the
    # one form the service writes names an event, so a later read finds it.
    try:
        found = uuid.UUID(value)
    except ValueError:
        found = None
    if found is None or str(found) != value.lower():
        raise InvalidRequest(
            field, "must be an event id as the service gives it (a UUID with dashes)"
        )
    return found


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_date_of_birth(value: str, now: datetime | None) -> str:
    """Empty (none given), or a date of birth as YYYY-MM-DD, from 1900 to today."""
    if not value:
        return value
    # fromisoformat alone also reads "19900101", "1990-W01-1" and times of day: the
    # stored text is what the policy reads again, so only one spelling is taken.
    born = None
    if _ISO_DATE.fullmatch(value):
        with contextlib.suppress(ValueError):
            born = date.fromisoformat(value)
    if born is None:
        raise InvalidRequest("date_of_birth", "must be an ISO date (YYYY-MM-DD)")
    if born < EARLIEST_BIRTH:
        raise InvalidRequest("date_of_birth", f"is before {EARLIEST_BIRTH:%Y-%m-%d}")
    if now is not None and born > now.date():
        raise InvalidRequest("date_of_birth", "is in the future")
    return value


@dataclass(frozen=True)
class RecordOptIn:
    request_id: str
    phone: str
    brand: str
    campaign: str
    tier: ConsentTier
    method: CollectionMethod
    proof: ConsentProof
    occurred_at: datetime
    source: ListSource = ListSource.FIRST_PARTY


@dataclass(frozen=True)
class RecordOptOut:
    request_id: str
    phone: str
    brand: str
    campaign: str | None
    channel: RevocationChannel
    occurred_at: datetime
    text: str = ""
    in_reply_to: str = ""


@dataclass(frozen=True)
class RecordReconfirmation:
    request_id: str
    phone: str
    brand: str
    campaign: str
    channel: RevocationChannel
    occurred_at: datetime
    detail: str = ""


@dataclass(frozen=True)
class RecordMessageSent:
    request_id: str
    phone: str
    brand: str
    campaign: str
    message_id: str
    kind: MessageKind
    occurred_at: datetime
    included_opt_out_language: bool = False
    identified_sender: bool = False
    relied_on: ReliedAnswer | None = None
    """The ``CanSend`` answer the sender relied on, as it was given."""
    from_number: str = ""
    """The number it went out from (optional; campaign health counts per number)."""


@dataclass(frozen=True)
class RecordDeliveryOutcome:
    """What the SMS provider reported became of a message recorded as sent."""

    request_id: str
    phone: str
    brand: str
    message_id: str
    """The provider's id of the message, as its ``RecordMessageSent`` gave it."""
    outcome: DeliveryOutcome | None
    """None: the caller named none, which is refused."""
    occurred_at: datetime
    error_code: str = ""
    """The provider's error code (Twilio's ``ErrorCode``, say); only with an error."""


MAX_SENDS_PER_CALL = 1_000
"""How many messages one ``RecordMessagesSent`` may record."""


@dataclass(frozen=True)
class SentMessage:
    """One message of a ``RecordMessagesSent``: what ``RecordMessageSent`` says of it,
    less the request id and brand the whole call shares."""

    phone: str
    campaign: str
    message_id: str
    kind: MessageKind
    occurred_at: datetime
    included_opt_out_language: bool = False
    identified_sender: bool = False
    relied_on: ReliedAnswer | None = None
    from_number: str = ""


@dataclass(frozen=True)
class RecordMessagesSent:
    """Up to ``MAX_SENDS_PER_CALL`` messages of one brand sent, as one request: one
    request id, one ``MessageSent`` per message (its ``index`` the message's place),
    refused whole when any message is bad."""

    request_id: str
    brand: str
    messages: tuple[SentMessage, ...]


MAX_RELIED_EVIDENCE = 100
"""How many evidence ids a relied-on answer may carry (an answer names a handful)."""
_MAX_RELIED_TEXT = 4_096
"""The longest consistency token a relied-on answer may carry."""


@lru_cache(maxsize=4_096)
def _is_token(text: str) -> bool:
    """Whether ``text`` reads as a consistency token. Kept: the sends of a batch
    mostly hand back the few tokens their checks were answered with."""
    try:
        ConsistencyToken.decode(text)
    except ValueError:
        return False
    return True


def _relied_on(answer: ReliedAnswer | None) -> ReliedAnswer | None:
    """``answer`` if it is one the service could have given, else ``InvalidRequest``."""
    if answer is None:
        return None
    token = answer.consistency_token
    if not token:
        raise InvalidRequest("relied_on.consistency_token", "is required")
    if len(token) > _MAX_RELIED_TEXT:
        raise InvalidRequest("relied_on.consistency_token", "is too long")
    if not _is_token(token):
        raise InvalidRequest(
            "relied_on.consistency_token", "is not a consistency token the service gave"
        )
    if answer.reason not in _REASONS:
        raise InvalidRequest("relied_on.reason", f"is not a reason: {answer.reason!r}")
    if len(answer.evidence) > MAX_RELIED_EVIDENCE:
        raise InvalidRequest(
            "relied_on.evidence_event_ids", f"may hold at most {MAX_RELIED_EVIDENCE} ids"
        )
    # The ids of the events the answer named: anything else (a NUL, a bidi override,
    # a word) would be kept in the ledger for good as what the sender relied on.
    evidence = tuple(
        str(_event_id(e, f"relied_on.evidence_event_ids[{i}]"))
        for i, e in enumerate(answer.evidence)
    )
    # The sweep reads allowed alone (a send against a "no"): an allowed that its reason
    # contradicts would pass a denied answer off as one that allowed the send.
    if answer.allowed != (Reason(answer.reason) in ALLOWING_REASONS):
        said = "allows" if answer.allowed else "denies"
        raise InvalidRequest(
            "relied_on.allowed",
            f"{said} with reason {answer.reason!r}, which the service gives only to an"
            f" answer that {'denies' if answer.allowed else 'allows'} a send",
        )
    return answer if evidence == answer.evidence else dataclasses.replace(answer, evidence=evidence)


_REASONS = frozenset(reason.value for reason in Reason)


@dataclass(frozen=True)
class RecordAgeVerification:
    request_id: str
    phone: str
    brand: str
    method: str
    occurred_at: datetime
    date_of_birth: str = ""
    verified_21_plus: bool = False


@dataclass(frozen=True)
class RecordSubscriberLocation:
    request_id: str
    phone: str
    brand: str
    region: str
    occurred_at: datetime
    detail: str = ""


@dataclass(frozen=True)
class ResolveRevocationCandidate:
    request_id: str
    phone: str
    brand: str
    candidate_event_id: str
    resolution: CandidateResolution
    occurred_at: datetime
    resolved_by: str = ""


@dataclass(frozen=True)
class DefineCampaign:
    request_id: str
    brand: str
    campaign: str
    policy: CampaignPolicy
    occurred_at: datetime


@dataclass(frozen=True)
class ChangeCampaignPolicy:
    request_id: str
    brand: str
    campaign: str
    policy: CampaignPolicy
    occurred_at: datetime


@dataclass(frozen=True)
class SetBrandPolicy:
    """A brand's own setting for all its campaigns (``ledger.events.BrandPolicySet``),
    from the moment it is recorded (``now``): it only makes rules apply earlier, so
    it is never dated back to before anyone could have relied on it."""

    request_id: str
    brand: str
    revoke_all: bool


@dataclass(frozen=True)
class HandleInboundMessage:
    request_id: str
    from_phone: str
    to_phone: str
    body: str
    message_id: str
    occurred_at: datetime


class ReplyKind(enum.Enum):
    """The reply an inbound text is owed: none, or one message of a kind."""

    NONE = "none"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    HELP = "help"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"


REPLY_MESSAGE_KINDS = {
    ReplyKind.OPT_OUT_CONFIRMATION: MessageKind.OPT_OUT_CONFIRMATION,
    ReplyKind.HELP: MessageKind.HELP_REPLY,
    ReplyKind.OPT_IN_CONFIRMATION: MessageKind.OPT_IN_CONFIRMATION,
}
"""The kind of message each owed reply is sent as: ``CanSend`` with that kind allows
it (``ledger.policy``), and ``RecordMessageSent`` with it records it as owed."""


@dataclass(frozen=True)
class InboundOutcome:
    """What handling an inbound text decided: the facts to record and the reply owed."""

    events: list[LedgerEvent]
    intent: Intent
    reply: ReplyKind = ReplyKind.NONE
    required_content: tuple[str, ...] = ()
    brand: str = ""
    campaign: str = ""
    notes: list[str] = field(default_factory=list)


def request_fingerprint(cmd: Any) -> str:
    """A digest of everything ``cmd`` says, the same in every process and version of
    Python: a retry of a request has the same, another request another.

    A number is digested in its E.164 form (``+1 (415) 555-0801`` as ``+14155550801``):
    the two spellings are one request, and a retry that spells it otherwise is that
    request. A field left at its default is left out, so a field added later with a
    default changes no earlier request's ids (a retry across that upgrade stays a
    retry). Renaming a field or a request type does change them; the golden ids in
    ``tests/unit/test_commands.py`` fail when that happens."""
    return _digest(_numbers_in_e164(cmd))


def fingerprint_as_spelled(cmd: Any) -> str | None:
    """The fingerprint ``cmd`` had before numbers were digested in E.164 (spelled as
    sent), or None where that is ``request_fingerprint``'s (every number in E.164
    already). A request recorded before then holds its request id under this one."""
    canonical = _numbers_in_e164(cmd)
    return None if canonical is cmd else _digest(cmd)


def _digest(cmd: Any) -> str:
    return hashlib.sha256(repr(_canonical(cmd)).encode()).hexdigest()[:32]


_NUMBER_FIELDS = frozenset({*_PHONES, "from_number"})


def _numbers_in_e164(value: Any) -> Any:
    """``value`` (a command) with each number it names in E.164, itself when they all
    are; a number that does not read as one is left as sent (the request is refused
    for it)."""
    if isinstance(value, tuple | list):
        items = [_numbers_in_e164(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if f.name in _NUMBER_FIELDS and isinstance(v, str) and v:
            try:
                e164 = to_e164(v)
            except InvalidPhoneNumber:
                continue
            if e164 != v:
                changes[f.name] = e164
        elif isinstance(v, tuple | list) and v and dataclasses.is_dataclass(v[0]):
            items = _numbers_in_e164(v)
            if items is not v:
                changes[f.name] = items
    return dataclasses.replace(value, **changes) if changes else value


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_Canonical = Callable[[Any], Any]
_CANONICAL: dict[type, _Canonical] = {}
"""Per type, how ``_canonical`` writes its values, worked out once from the type: a call
of 1,000 messages sent digests 1,000, each a dozen values deep."""
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _canonical(value: Any) -> Any:
    """``value`` as nested tuples of str, int, float, bool and None, whose ``repr`` is
    stable: an instant as microseconds since the epoch, whatever its time zone object."""
    cls = type(value)
    write = _CANONICAL.get(cls)
    if write is None:
        write = _CANONICAL[cls] = _canonical_of(cls)
    return write(value)


def _same(value: Any) -> Any:
    return value


def _moment(value: datetime) -> Any:
    if value.tzinfo is None:
        return ("naive", value.isoformat())
    return ("instant", (value - _EPOCH) // _MICROSECOND)


def _items(value: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
    return tuple([_canonical(v) for v in value])


def _dataclass(cls: type) -> _Canonical:
    """A dataclass as its name and its fields not at their defaults, each written."""
    name = cls.__name__
    fields = tuple((f.name, _default(f)) for f in dataclasses.fields(cls))

    def write(value: Any) -> Any:
        out = []
        for f, d in fields:
            v = getattr(value, f)
            if v != d:
                out.append((f, v if type(v) in _PLAIN else _canonical(v)))
        return (name, tuple(out))

    return write


def _member(cls: type[enum.Enum]) -> _Canonical:
    """An enum member as its type's name and its value, kept per member."""
    written: dict[enum.Enum, Any] = {}

    def write(value: enum.Enum) -> Any:
        found = written.get(value)
        if found is None:
            found = written[value] = (cls.__name__, _canonical(value.value))
        return found

    return write


def _refuse(value: Any) -> Any:
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _canonical_of(cls: type) -> _Canonical:
    """How to write a value of ``cls``: the first of these that fits it."""
    if cls in _PLAIN:
        return _same
    if dataclasses.is_dataclass(cls):
        return _dataclass(cls)
    if issubclass(cls, datetime):
        return _moment
    if issubclass(cls, timedelta):
        return lambda value: ("span", value // _MICROSECOND)
    if issubclass(cls, date | time):
        return lambda value: (type(value).__name__, value.isoformat())
    if issubclass(cls, enum.Enum):
        return _member(cls)
    if issubclass(cls, tuple | list):
        return _items
    if issubclass(cls, uuid.UUID):
        return str
    if issubclass(cls, str | int | float):
        return _same
    return _refuse


def _base(cmd: Any, index: int, at: datetime, brand: str) -> dict[str, Any]:
    fingerprint = request_fingerprint(cmd)
    return {
        "event_id": event_id_for(cmd.request_id, index, brand, fingerprint),
        "occurred_at": at,
        "request_id": cmd.request_id,
        "request_fingerprint": fingerprint,
    }


def _subscriber(cmd: Any) -> dict[str, Any]:
    """The fields every subscriber fact of a one-event request shares, validated."""
    return {
        **_base(cmd, 0, cmd.occurred_at, check_name(cmd.brand, "brand")),
        "phone": to_e164(cmd.phone),
        "brand": cmd.brand,
    }


def _placed(cmd: Any, now: datetime) -> dict[str, Any]:
    """``_subscriber`` for a fact the policy reads as of its time (a reconfirmation,
    an age verification, a location): ahead of the clock, CanSend read it at once
    while CanSendAsOf and the sweep, for the same moment, left it out."""
    return {**_subscriber(cmd), "occurred_at": consent_time(cmd.occurred_at, now)}


def _opt_in(cmd: RecordOptIn, now: datetime) -> list[LedgerEvent]:
    _check_proof(cmd.proof)
    if cmd.source is not ListSource.FIRST_PARTY:
        raise PurchasedListError(
            "source", f"a {cmd.source.value} list is not consent: consent cannot be bought"
        )
    missing = cmd.proof.missing_fields(cmd.method)
    if missing:
        reason = f"required for {cmd.method.value} consent (missing: {', '.join(missing)})"
        raise MissingProofError(missing[0], reason, *((m, reason) for m in missing[1:]))
    registered = check_time(cmd.proof.registered_at, now, "proof.registered_at")
    if abs(cmd.occurred_at - registered) > MAX_CLOCK_SKEW:
        # The fold orders facts by occurred_at: a consent stamped with the time it was
        # imported would outrank an opt-out made between registration and import.
        raise InvalidRequest(
            "occurred_at",
            f"must be when consent was given, proof.registered_at ({registered.isoformat()}),"
            f" within {MAX_CLOCK_SKEW}; a consent recorded late keeps the time it was given",
        )
    return [
        ConsentGranted(
            **{**_subscriber(cmd), "occurred_at": consent_time(cmd.occurred_at, now)},
            campaign=check_name(cmd.campaign, "campaign"),
            tier=cmd.tier,
            method=cmd.method,
            proof=_said(_with_region(cmd.proof)),
            source=cmd.source,
            stated_at=stated_if_ahead(cmd.occurred_at, now),
        )
    ]


def consent_time(occurred_at: datetime, now: datetime) -> datetime:
    """When a fact of consent (an opt-in, an opt-out, a text and what it means, a
    review's decision) takes its place in world order: when it happened, or now if
    it is stamped later than now. It cannot have happened after the ledger held it,
    and a time ahead of the service's clock (a client's clock ahead, within
    ``MAX_CLOCK_SKEW``) would misplace it: a consent ahead outranked an opt-out
    acknowledged after it, and an opt-out ahead had its one confirmation refused,
    and a START texted after it outranked, until its time."""
    return min(occurred_at, now)


def stated_if_ahead(occurred_at: datetime, now: datetime) -> datetime | None:
    """A fact's own time when ``consent_time`` places it earlier (it is stamped ahead
    of ``now``), else None: kept on it (``ConsentRevoked.stated_at``, and a consent's),
    so a consent stamped between an opt-out's place and its time is told apart from
    one after it."""
    return occurred_at if occurred_at > now else None


def check_consent_after_opt_outs(
    revocations: Iterable[ConsentRevoked],
    stated: datetime,
    placed: datetime,
    now: datetime,
    *,
    unstated_in_doubt: bool = False,
) -> None:
    """Refuse, on ``occurred_at``, a consent stated at ``stated`` (an opt-in, a START)
    and placed at ``placed`` (``consent_time``) that would outrank one of
    ``revocations``, opt-outs of its number towards its brand (brand-wide, or of any
    campaign of it), that came after it by the records' own times.

    An opt-out stamped ahead took its place when recorded, earlier than it said
    (``ConsentRevoked.stated_at``). A consent stamped between the two, placed after
    the opt-out, outranked it and CanSend allowed, though by their own times the
    opt-out is the person's later word: the allow could not be defended, recorded a
    moment later or backfilled a week later. At the same time the opt-out wins, so
    one stated then is refused too. A consent placed no later than the opt-out
    loses to it in the fold anyway, and is recorded. The fold orders the opt-out
    at its stated time as well (``ledger.state.stated_key``), so one such consent
    that reaches the ledger past this check (two instances racing) denies still:
    refusing it tells the client at the write.

    ``unstated_in_doubt``: also refuse a consent stamped ahead while an opt-out
    that keeps no stated time was recorded within ``MAX_CLOCK_SKEW``. Recorded
    before stated times were kept, it may have been stamped ahead too, and which
    came first cannot be told. An opt-out recorded since keeps its time when it is
    ahead, so none recorded now is in doubt once every instance keeps it."""
    revocations = list(revocations)
    later = [
        r.stated_at
        for r in revocations
        if r.stated_at is not None and r.stated_at >= stated and r.occurred_at < placed
    ]
    if later:
        raise InvalidRequest(
            "occurred_at",
            f"an opt-out of this number is stamped {max(later).isoformat()}, no earlier"
            f" than this consent ({stated.isoformat()}), and was recorded before it: by"
            " their own times the opt-out came later, so the consent cannot outrank it;"
            " a consent given after the opt-out is recorded with the time it was given",
        )
    if not unstated_in_doubt or stated <= now:
        return
    recent = [
        r.occurred_at
        for r in revocations
        if r.stated_at is None and r.occurred_at >= now - MAX_CLOCK_SKEW
    ]
    if recent:
        raise InvalidRequest(
            "occurred_at",
            f"is ahead of the service's clock ({now.isoformat()}), and an opt-out of "
            f"this number was recorded at {max(recent).isoformat()}, within "
            f"{MAX_CLOCK_SKEW}: which came first cannot be told; send the time the "
            "consent was given by a correct clock",
        )


def _said(proof: ConsentProof) -> ConsentProof:
    """``proof`` with each text field that says nothing (``says_nothing``: blank, or a
    placeholder such as "N/A") left empty, as it is read: a field the method needs
    that says nothing is refused before, and one it does not is not given. The
    request, and so its fingerprint and event ids, stays as it was sent."""
    empty: dict[str, Any] = {
        name: ""
        for name in _PROOF_TEXT
        if getattr(proof, name) and says_nothing(getattr(proof, name), name)
    }
    return dataclasses.replace(proof, **empty) if empty else proof


def _with_region(proof: ConsentProof) -> ConsentProof:
    """``proof`` with its region as a USPS code ("fl" -> "FL"), or ``InvalidRequest``:
    a state that silently meant nothing would leave its rules unapplied."""
    if not proof.region:
        return proof
    code = normalise_region(proof.region)
    if code is None:
        raise InvalidRequest(
            "proof.region",
            f"{proof.region[:16]!r} is not the two-letter USPS code of a US state, DC or a "
            "territory",
        )
    return proof if code == proof.region else dataclasses.replace(proof, region=code)


def check_required_proof(cmd: RecordOptIn, policy: CampaignPolicy) -> None:
    """Refuse an opt-in whose proof leaves empty a field its campaign requires
    (``CampaignPolicy.required_proof_fields``), naming the first such field."""
    missing = cmd.proof.template_missing(cmd.method)
    for name in policy.required_proof_fields:
        if f"proof.{name}" in missing:
            raise MissingProofError(
                f"proof.{name}",
                f"is required by campaign {cmd.brand}/{cmd.campaign}"
                f" (required_proof_fields: {', '.join(policy.required_proof_fields)})",
            )


def _opt_out(cmd: RecordOptOut, now: datetime) -> list[LedgerEvent]:
    check_length(cmd.text, "text")
    check_length(cmd.in_reply_to, "in_reply_to")
    campaign = None if cmd.campaign is None else check_name(cmd.campaign, "campaign")
    if campaign is not None and cmd.text and classify(cmd.text) is Intent.OPT_OUT_BRAND_WIDE:
        # The person's words say what they revoked: a STOPALL recorded against one
        # campaign ends every campaign of the brand, as the same text sent in does.
        campaign = None
    return [
        ConsentRevoked(
            **{**_subscriber(cmd), "occurred_at": consent_time(cmd.occurred_at, now)},
            campaign=campaign,
            channel=cmd.channel,
            text=cmd.text,
            in_reply_to=cmd.in_reply_to,
            stated_at=stated_if_ahead(cmd.occurred_at, now),
        )
    ]


def _reconfirm(cmd: RecordReconfirmation, now: datetime) -> list[LedgerEvent]:
    check_length(cmd.detail, "detail")
    return [
        ConsentReconfirmed(
            **_placed(cmd, now),
            campaign=check_name(cmd.campaign, "campaign"),
            channel=cmd.channel,
            detail=cmd.detail,
        )
    ]


def _sent(cmd: RecordMessageSent, now: datetime) -> list[LedgerEvent]:
    if not cmd.message_id:
        raise InvalidRequest("message_id", "is required")
    check_length(cmd.message_id, "message_id")
    return [
        MessageSent(
            **_subscriber(cmd),
            campaign=check_name(cmd.campaign, "campaign"),
            message_id=cmd.message_id,
            kind=cmd.kind,
            included_opt_out_language=cmd.included_opt_out_language,
            identified_sender=cmd.identified_sender,
            relied_on=_relied_on(cmd.relied_on),
            from_number=to_e164(cmd.from_number, field="from_number") if cmd.from_number else "",
        )
    ]


def _delivery(cmd: RecordDeliveryOutcome, now: datetime) -> list[LedgerEvent]:
    if not cmd.message_id:
        raise InvalidRequest("message_id", "is required")
    check_length(cmd.message_id, "message_id")
    if cmd.outcome is None:
        raise InvalidRequest("outcome", "is required (delivered, failed or undeliverable)")
    check_length(cmd.error_code, "error_code")
    if cmd.error_code and not cmd.outcome.is_error:
        raise InvalidRequest("error_code", "must be empty when the message was delivered")
    return [
        DeliveryOutcomeReported(
            **_subscriber(cmd),
            message_id=cmd.message_id,
            campaign="",  # the send's, filled in once it is found (``services.usecases.writes``)
            outcome=cmd.outcome,
            error_code=cmd.error_code,
        )
    ]


OPT_OUT_ERROR_CODES = frozenset({"21610"})
"""The provider error codes that say the recipient opted out at the provider, by
default (``CONSENT_OPT_OUT_ERROR_CODES``): Twilio's 21610, "Attempt to send to
unsubscribed recipient", answered once the person replied STOP to the sender."""


def provider_opt_out_hold(
    reported: DeliveryOutcomeReported, codes: frozenset[str], now: datetime
) -> RevocationCandidateFlagged | None:
    """The hold a delivery outcome places when its error code is one of ``codes``,
    else None. The provider only answers so after the person opted out there, so the
    outcome is evidence of a STOP this ledger never recorded (the gateway lost it):
    the number is denied for every campaign of the brand until someone reviews it.

    Placed at the outcome's own time (never ahead of ``now``). Its id is derived
    from the message, not the request: a retry, or another outcome of the same
    message, holds nothing twice."""
    return _provider_hold(
        reported.phone,
        reported.brand,
        reported.message_id,
        reported.error_code,
        reported.occurred_at,
        reported.recorded_by,
        codes,
        now,
    )


@dataclass(frozen=True)
class RefusedOutcome:
    """What a ``RecordDeliveryOutcome`` refused for a detail said, as sent: its fields
    may be what was wrong with it. ``occurred_at`` is None where it is no time."""

    phone: str
    brand: str
    message_id: str
    error_code: str
    occurred_at: datetime | None
    recorded_by: str = ""


def refused_outcome_hold(
    said: RefusedOutcome, codes: frozenset[str], refused: str, now: datetime
) -> RevocationCandidateFlagged | None:
    """``provider_opt_out_hold`` for an outcome refused ``refused`` (no send recorded
    for its message, a time before the send, a bad field), when its error code is
    one of ``codes`` and its number and brand can be read; else None. The provider
    answers 21610 when asked to send, so the message never went out and a sender
    often recorded no send: refused and dropped, the opt-out was lost. The hold's
    id is the one the outcome recorded would place, so a corrected outcome of the
    same message holds nothing twice."""
    try:
        phone, brand = to_e164(said.phone), check_name(said.brand, "brand")
    except DomainError:
        return None
    return _provider_hold(
        phone,
        brand,
        said.message_id,
        said.error_code,
        said.occurred_at,
        said.recorded_by,
        codes,
        now,
        refused=refused,
    )


def _provider_hold(
    phone: str,
    brand: str,
    message_id: str,
    error_code: str,
    occurred_at: datetime | None,
    recorded_by: str,
    codes: frozenset[str],
    now: datetime,
    *,
    refused: str = "",
) -> RevocationCandidateFlagged | None:
    code = error_code.strip()
    if not code or code not in codes:
        return None
    said = f"{brand}\0{phone}\0{message_id}"
    digest = hashlib.sha256(said.encode()).hexdigest()[:32]
    request_id = f"{PROVIDER_OPT_OUT_PREFIX}{digest}"
    text = (
        f"the provider reported error {code} for message {message_id!r}:"
        " the recipient opted out at the provider"
    )
    if refused:
        text = f"{text}; the outcome was refused ({refused})"
    return RevocationCandidateFlagged(
        event_id=event_id_for(request_id, 0, brand, digest),
        occurred_at=_held_at(occurred_at, now),
        request_id=request_id,
        request_fingerprint=digest,
        recorded_by=recorded_by,
        phone=phone,
        brand=brand,
        inbound_message_id="",
        text=text[: TEXT_LIMITS["text"]],
        stated_at=_held_stated(occurred_at, now),
    )


def _sent_batch(cmd: RecordMessagesSent, now: datetime) -> list[LedgerEvent]:
    """One ``MessageSent`` per message, each as ``_sent`` builds it. Every bad field of
    every message is named (``messages[3].phone``) and nothing is built: a call that
    recorded some of its messages would have to be told apart from its own retry.

    Read in two passes (``_SentReader``): each message checked and built once, the
    checks its messages share made once a call; then, the call's fingerprint digesting
    every message, each event given its id."""
    brand = cmd.brand  # checked with the request's other fields (``to_events``)
    if not cmd.messages:
        raise InvalidRequest("messages", "is required (1 to 1,000 messages)")
    if len(cmd.messages) > MAX_SENDS_PER_CALL:
        raise InvalidRequest(
            "messages",
            f"holds {len(cmd.messages):,} messages; at most {MAX_SENDS_PER_CALL:,} a call",
        )
    read = _SentReader(cmd, now)
    found = Violations()
    events: list[MessageSent] = []
    in_e164: list[SentMessage] = []
    first: dict[tuple[str, str], tuple[int, MessageSent]] = {}  # by number and message id
    for i, message in enumerate(cmd.messages):
        sent = read.sent(message)
        if sent is None:
            # Some check refused it: the checks again, one by one, name every field.
            item = Violations()
            check_fields(vars(message), now, item)
            item.check(_one_sent, cmd, i, message, brand, "")
            found.add(_within(item, f"messages[{i}]."))
            continue
        events.append(sent)
        in_e164.append(
            message
            if sent.phone == message.phone and sent.from_number == message.from_number
            else dataclasses.replace(message, phone=sent.phone, from_number=sent.from_number)
        )
        # A message id again is that message (answered as the first), unless it says
        # something else of it: which of the two is the message is not known.
        key = (sent.phone, sent.message_id)
        seen = first.get(key)
        if seen is None:
            first[key] = (i, sent)
        elif other := send_differences(seen[1], sent):
            found.add(
                InvalidRequest(
                    f"messages[{i}].message_id",
                    f"is messages[{seen[0]}]'s message id for this number, with another"
                    f" {', '.join(other)}",
                )
            )
    found.raise_if_any()
    # ``request_fingerprint(cmd)``: every message read, each number is in ``in_e164``
    # as ``_numbers_in_e164`` would write it, so no number is read again.
    fingerprint = _digest(RecordMessagesSent(cmd.request_id, brand, tuple(in_e164)))
    return [
        evolved(
            sent,
            event_id=event_id_for(cmd.request_id, i, brand, fingerprint),
            request_fingerprint=fingerprint,
        )
        for i, sent in enumerate(events)
    ]


class _SentReader:
    """Reads a call's messages into ``MessageSent``: what its messages share (a
    campaign, a time, the answer relied on) checked once a call, each message's own
    fields once, every check of ``check_fields`` and ``_one_sent`` made."""

    def __init__(self, cmd: RecordMessagesSent, now: datetime) -> None:
        self._now = now
        self._shared: dict[tuple[str, Any], Any] = {}
        self._template = MessageSent(
            event_id=_NO_ID,
            occurred_at=now,
            request_id=cmd.request_id,
            request_fingerprint="",
            phone="",
            brand=cmd.brand,
            campaign="",
            message_id="",
            kind=MessageKind.REGULAR,
        )

    def _once(self, check: str, value: Any, fn: Callable[[], Any]) -> Any:
        key = (check, value)
        try:
            return self._shared[key]
        except KeyError:
            found = self._shared[key] = fn()
            return found
        except TypeError:  # a value that cannot be a key (a list for a tuple) is checked alone
            return fn()

    def sent(self, m: SentMessage) -> MessageSent | None:
        """``m`` as its ``MessageSent`` (its event id to come), or None when any of its
        fields is refused."""
        try:
            message_id = m.message_id
            if not message_id:
                return None
            check_identifier(check_length(message_id, "message_id"), "message_id")
            at = m.occurred_at
            self._once("at", at, lambda: _check_time_at(at, self._now, "occurred_at"))
            name = m.campaign
            campaign = self._once("campaign", name, lambda: check_name(name, "campaign"))
            relied = m.relied_on
            if relied is not None:
                relied = self._once("relied", relied, lambda: _relied_on(relied))
            phone = to_e164(m.phone)
            from_number = to_e164(m.from_number, field="from_number") if m.from_number else ""
        except DomainError:
            return None
        return evolved(
            self._template,
            occurred_at=at,
            phone=phone,
            campaign=campaign,
            message_id=message_id,
            kind=m.kind,
            included_opt_out_language=m.included_opt_out_language,
            identified_sender=m.identified_sender,
            relied_on=relied,
            from_number=from_number,
        )


_NO_ID = uuid.UUID(int=0)
"""A message's event id until the call's fingerprint gives it its own."""


def check_sent_messages(cmd: RecordMessagesSent, now: datetime | None, found: Violations) -> None:
    """``check_fields`` for each message of ``cmd``, noting each violation in ``found``
    under the message's place (``messages[3].phone``)."""
    for i, message in enumerate(cmd.messages):
        item = Violations()
        check_fields(vars(message), now, item)
        if item:
            found.add(_within(item, f"messages[{i}]."))


def _one_sent(
    cmd: RecordMessagesSent, index: int, m: SentMessage, brand: str, fingerprint: str
) -> MessageSent:
    if not m.message_id:
        raise InvalidRequest("message_id", "is required")
    check_length(m.message_id, "message_id")
    return MessageSent(
        event_id=event_id_for(cmd.request_id, index, brand, fingerprint),
        occurred_at=m.occurred_at,
        request_id=cmd.request_id,
        request_fingerprint=fingerprint,
        phone=to_e164(m.phone),
        brand=brand,
        campaign=check_name(m.campaign, "campaign"),
        message_id=m.message_id,
        kind=m.kind,
        included_opt_out_language=m.included_opt_out_language,
        identified_sender=m.identified_sender,
        relied_on=_relied_on(m.relied_on),
        from_number=to_e164(m.from_number, field="from_number") if m.from_number else "",
    )


def _within(found: Violations, prefix: str) -> DomainError:
    """The violations ``found`` in one message, as one error naming each field under
    ``prefix`` (the message's place in its call)."""
    try:
        found.raise_if_any()
    except DomainError as exc:
        named = Exception.__new__(type(exc))
        named.__dict__.update(exc.__dict__)
        named.violations = tuple((prefix + f, r) for f, r in exc.violations)
        named.field, named.reason = named.violations[0]
        named.args = ("; ".join(f"{f}: {r}" for f, r in named.violations),)
        return named
    raise AssertionError("no violation to name")


def _age(cmd: RecordAgeVerification, now: datetime) -> list[LedgerEvent]:
    if is_blank(cmd.method):  # spaces or a zero-width space name no way of verifying
        raise InvalidRequest("method", "is required (how the age was verified)")
    check_length(cmd.method, "method")
    if not cmd.date_of_birth and not cmd.verified_21_plus:
        raise InvalidRequest("date_of_birth", "give a date of birth or verified_21_plus")
    dob = check_date_of_birth(cmd.date_of_birth, now)
    if dob and cmd.verified_21_plus and not is_21_plus(False, dob, cmd.occurred_at):
        raise InvalidRequest(
            "verified_21_plus", "contradicts date_of_birth, which is under 21 at occurred_at"
        )
    return [
        AgeVerified(
            **_placed(cmd, now),
            method=cmd.method,
            date_of_birth=cmd.date_of_birth,
            verified_21_plus=cmd.verified_21_plus,
        )
    ]


def _located(cmd: RecordSubscriberLocation, now: datetime) -> list[LedgerEvent]:
    if not cmd.region:
        raise InvalidRequest("region", "is required (the USPS code of a US state)")
    code = normalise_region(cmd.region)
    if code is None:
        raise InvalidRequest(
            "region",
            f"{cmd.region[:16]!r} is not the two-letter USPS code of a US state, DC or a territory",
        )
    check_length(cmd.detail, "detail")
    return [SubscriberLocated(**_placed(cmd, now), region=code, detail=cmd.detail)]


def _resolve(cmd: ResolveRevocationCandidate, now: datetime) -> list[LedgerEvent]:
    candidate = _candidate_id(cmd.candidate_event_id)
    check_length(cmd.resolved_by, "resolved_by")
    # ANY_BRAND holds the STOPs whose brand was unknown; they are resolved there.
    brand = cmd.brand if cmd.brand == ANY_BRAND else check_name(cmd.brand, "brand")
    phone = to_e164(cmd.phone)
    # Ahead of the clock, a dismissal lifted the hold for CanSend at once, while
    # CanSendAsOf for that moment still held it; so a decision takes now at the latest.
    at = consent_time(cmd.occurred_at, now)
    resolved = RevocationCandidateResolved(
        **_base(cmd, 0, at, brand),
        phone=phone,
        brand=brand,
        candidate_event_id=candidate,
        resolution=cmd.resolution,
        resolved_by=cmd.resolved_by,
    )
    if cmd.resolution is not CandidateResolution.REVOKED:
        return [resolved]
    # A reply that meant "stop" stops everything from the brand: the safe reading.
    # The opt-out goes first: an append of several events is not atomic, and the
    # resolution written without it would lift the hold and allow sends again.
    revoked = ConsentRevoked(
        **_base(cmd, 1, at, brand),
        phone=phone,
        brand=brand,
        campaign=None,
        channel=RevocationChannel.FREE_TEXT,
        text=f"resolved candidate {candidate}",
        stated_at=stated_if_ahead(cmd.occurred_at, now),
    )
    return [revoked, resolved]


def _campaign(cmd: DefineCampaign | ChangeCampaignPolicy, now: datetime) -> list[LedgerEvent]:
    try:
        cmd.policy.validate()
    except InvalidCampaignPolicy as exc:  # name the field as the request spells it
        raise InvalidCampaignPolicy(f"policy.{exc.field}", exc.reason) from exc
    check_length(cmd.policy.category, "policy.category")
    category = check_category(cmd.policy.category)
    for i, number in enumerate(cmd.policy.sender_numbers):
        to_e164(number, field=f"policy.sender_numbers[{i}]")
    cls = CampaignDefined if isinstance(cmd, DefineCampaign) else CampaignPolicyChanged
    policy = CampaignPolicy(
        **{
            **cmd.policy.__dict__,
            "category": cmd.policy.category and category.value,
            "sender_numbers": tuple(to_e164(n) for n in cmd.policy.sender_numbers),
        }
    )
    brand = check_name(cmd.brand, "brand")
    # Rules stamped ahead of the service's clock (the caller's clock ahead) take force
    # when recorded: at their stamp they would come back into force over a change
    # recorded after them, and the ledger's latest word would be overruled.
    return [
        cls(
            **_base(cmd, 0, consent_time(cmd.occurred_at, now), brand),
            brand=brand,
            campaign=check_name(cmd.campaign, "campaign"),
            policy=policy,
        )
    ]


def _brand_policy(cmd: SetBrandPolicy, now: datetime) -> list[LedgerEvent]:
    if cmd.revoke_all is not True:
        # One-way: turning it off would let through what a STOP to a sibling campaign
        # stopped, and from REVOKE_ALL_EFFECTIVE on the rule applies regardless.
        raise InvalidRequest(
            "revoke_all",
            "must be true: the revoke-all rule can be put in force early, never lifted "
            "(47 CFR 64.1200(a)(10) applies to every brand from 2027-01-31)",
        )
    brand = check_name(cmd.brand, "brand")
    return [
        BrandPolicySet(
            **_base(cmd, 0, now, brand), brand=brand, campaign=BRAND_SETTINGS, revoke_all=True
        )
    ]


def check_category(text: str) -> CampaignCategory:
    """The category ``text`` names (``ledger.campaigns.category_of``), if the provider
    allows it: an unknown name is refused with the names there are, and a prohibited
    category with the policy's reason (``ProhibitedContent``)."""
    category = category_of(text)
    if category is None:
        allowed = ", ".join(c.value for c in CampaignCategory if c not in PROHIBITED)
        raise InvalidCampaignPolicy(
            "policy.category", f"{text!r} is not a category; one of: {allowed}"
        )
    if category in PROHIBITED:
        raise ProhibitedContent(
            "policy.category",
            f"{category.value}: the provider's Acceptable Use Policy never allows it in the "
            f"US, with consent or without ({PROHIBITED[category]})",
            category.value,
        )
    return category


_BUILDERS: dict[type[Any], Callable[[Any, datetime], list[LedgerEvent]]] = {
    RecordOptIn: _opt_in,
    RecordOptOut: _opt_out,
    RecordReconfirmation: _reconfirm,
    RecordMessageSent: _sent,
    RecordDeliveryOutcome: _delivery,
    RecordMessagesSent: _sent_batch,
    RecordAgeVerification: _age,
    RecordSubscriberLocation: _located,
    ResolveRevocationCandidate: _resolve,
    DefineCampaign: _campaign,
    ChangeCampaignPolicy: _campaign,
    SetBrandPolicy: _brand_policy,
}

Command = (
    RecordOptIn
    | RecordOptOut
    | RecordReconfirmation
    | RecordMessageSent
    | RecordDeliveryOutcome
    | RecordMessagesSent
    | RecordAgeVerification
    | RecordSubscriberLocation
    | ResolveRevocationCandidate
    | DefineCampaign
    | ChangeCampaignPolicy
    | SetBrandPolicy
)


def to_events(cmd: Command, now: datetime) -> list[LedgerEvent]:
    """Validate ``cmd`` against the rules at ``now`` and build its facts, or raise
    one ``DomainError`` naming every bad field."""
    found = Violations()
    check_fields(vars(cmd), now, found)
    try:
        events = _BUILDERS[type(cmd)](cmd, now)
    except DomainError as exc:
        found.add(exc)
    except Exception:
        if not found:
            raise
        # A builder may trip over a field already refused: that refusal is the answer.
    found.raise_if_any()
    return events


def check_inbound(cmd: HandleInboundMessage, now: datetime) -> None:
    """Every field of an inbound text, checked before anything is looked up for it."""
    found = Violations()
    check_fields(vars(cmd), now, found)
    found.raise_if_any()


OPT_OUT_CONFIRMATION_CONTENT = ("identify_sender", "confirm_no_further_messages")
OPT_IN_CONFIRMATION_CONTENT = ("identify_sender", "opt_out_instructions")
HELP_CONTENT = ("identify_sender", "customer_care_contact", "opt_out_instructions")
REPLY_CONTENT: dict[ReplyKind, tuple[str, ...]] = {
    ReplyKind.NONE: (),
    ReplyKind.OPT_OUT_CONFIRMATION: OPT_OUT_CONFIRMATION_CONTENT,
    ReplyKind.OPT_IN_CONFIRMATION: OPT_IN_CONFIRMATION_CONTENT,
    ReplyKind.HELP: HELP_CONTENT,
}
"""What each kind of reply must contain."""


def handle_inbound(
    cmd: HandleInboundMessage,
    campaign: Campaign,
    state: SubscriberState,
    now: datetime,
    held_then: Sequence[str] = (),
) -> InboundOutcome:
    """Turn an inbound text into facts: always the message itself, plus what it means.

    ``campaign`` is the campaign that owns the receiving number and ``state`` the
    sender's state towards that brand. The interpretation is recorded as facts of
    its own, so a later change of keyword rules never rewrites history.

    ``held_then`` names the brand's other campaigns whose rules listed the number at
    the text's own time, when ``campaign``'s did not: the text, delivered after the
    number moved, answered them. A STOP is an opt-out of each of them as well as of
    ``campaign``; any other text, sent to one of them alone, is that campaign's (its
    conversation, its HELP, its START), never the new holder's.
    """
    check_inbound(cmd, now)
    if not cmd.message_id:
        raise InvalidRequest("message_id", "is required")
    check_length(cmd.message_id, "message_id")
    check_length(cmd.body, "body")
    phone = to_e164(cmd.from_phone, field="from_phone")
    others = sorted(set(held_then) - {campaign.campaign})
    name = others[0] if len(others) == 1 else campaign.campaign
    brand, at = campaign.brand, consent_time(cmd.occurred_at, now)
    intent = classify(cmd.body)
    events: list[LedgerEvent] = [
        InboundMessageReceived(
            **_base(cmd, 0, at, brand),
            phone=phone,
            brand=brand,
            message_id=cmd.message_id,
            to_number=to_e164(cmd.to_phone, field="to_phone"),
            body=cmd.body,
            campaign=name,
            intent=intent.value,  # what earns a HELP its reply (ledger.policy)
        )
    ]
    outcome: dict[str, Any] = {"intent": intent, "brand": brand, "campaign": name}
    if intent in (Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE):
        # A STOPALL covers every campaign already; a STOP also those that sent from
        # the number when it was texted.
        names: list[str | None] = [None]
        if intent is Intent.OPT_OUT:
            names = [name, *sorted({*others, campaign.campaign} - {name})]
        events.extend(
            ConsentRevoked(
                **_base(cmd, 1 + i, at, brand),
                phone=phone,
                brand=brand,
                campaign=revoked,
                channel=RevocationChannel.KEYWORD,
                text=cmd.body,
                in_reply_to=cmd.message_id,
                stated_at=stated_if_ahead(cmd.occurred_at, now),
            )
            for i, revoked in enumerate(names)
        )
        return InboundOutcome(
            events,
            reply=ReplyKind.OPT_OUT_CONFIRMATION,
            required_content=OPT_OUT_CONFIRMATION_CONTENT,
            **outcome,
        )
    if intent is Intent.OPT_IN:
        return _resume(cmd, events, phone, brand, name, state, outcome, at)
    if intent is Intent.HELP:
        return InboundOutcome(
            events, reply=ReplyKind.HELP, required_content=HELP_CONTENT, **outcome
        )
    if intent is Intent.REVOCATION_CANDIDATE:
        events.append(
            RevocationCandidateFlagged(
                **_base(cmd, 1, at, brand),
                phone=phone,
                brand=brand,
                inbound_message_id=cmd.message_id,
                text=cmd.body,
                stated_at=stated_if_ahead(cmd.occurred_at, now),
            )
        )
    return InboundOutcome(events, **outcome)


def _resume(
    cmd: HandleInboundMessage,
    events: list[LedgerEvent],
    phone: str,
    brand: str,
    name: str,
    state: SubscriberState,
    outcome: dict[str, Any],
    at: datetime,
) -> InboundOutcome:
    """START/UNSTOP/YES: resume the campaign whose number received it, and only it.

    The facts do not depend on ``state``: the START is recorded as a resume of this
    campaign whatever the view showed when it was read, so the same texts record
    the same facts however fast they come and whichever instance handles them (two
    instances may read the same state at once). The fold gives the resume its
    meaning (``ledger.policy.standing``): it restores this campaign's own prior
    grant, lifting this campaign's STOP and, for this campaign only, a STOPALL
    older than it; without a prior grant it allows nothing. Only the reply reads
    ``state``: the opt-in confirmation is owed when there is a grant to resume."""
    events.append(
        ConsentResumed(
            **_base(cmd, 1, at, brand),
            phone=phone,
            brand=brand,
            campaign=name,
            inbound_message_id=cmd.message_id,
            # ``at`` is ``consent_time``: earlier than the text's time only when ahead.
            stated_at=stated_if_ahead(cmd.occurred_at, at),
        )
    )
    if state.campaign(name).grant is None:
        note = f"no prior consent for campaign {name}: nothing to resume"
        return InboundOutcome(events, notes=[note], **outcome)
    if state.pending_candidates():  # CanSend denies its confirmation (``ledger.policy``)
        note = "an opt-out held for review stands, which a START does not lift: no reply owed"
        return InboundOutcome(events, notes=[note], **outcome)
    return InboundOutcome(
        events,
        reply=ReplyKind.OPT_IN_CONFIRMATION,
        required_content=OPT_IN_CONFIRMATION_CONTENT,
        **outcome,
    )


# ---- opt-outs no defined campaign can take --------------------------------------------
#
# A STOP refused is a STOP lost: gateways do not retry a refusal, and callers of
# RecordOptOut mostly log it and move on. So an opt-out whose campaign is not known
# is recorded all the same, as an unattributed revocation candidate: the review
# queue lists it, and until someone resolves it the policy reads it as an opt-out of
# every campaign of its brand, or, with the brand unknown too (``ANY_BRAND``), of
# every brand (``ledger.policy.Check._unresolved_revocation``).


def unattributed_opt_out(cmd: RecordOptOut, now: datetime) -> list[LedgerEvent]:
    """The facts of ``cmd`` when its campaign is not defined: the candidate that keeps
    it. Its id is the one the opt-out itself would have had, so a retry of the request
    after the campaign is defined is still a retry of this one."""
    check_request_id(cmd.request_id)
    check_time(cmd.occurred_at, now)
    (revoked,) = _opt_out(cmd, now)  # every check an opt-out gets
    assert isinstance(revoked, ConsentRevoked)
    return [
        RevocationCandidateFlagged(
            **_base(cmd, 0, revoked.occurred_at, cmd.brand),
            phone=revoked.phone,
            brand=revoked.brand,
            inbound_message_id=cmd.in_reply_to,
            text=cmd.text or f"opt-out of campaign {cmd.campaign} ({cmd.channel.value})",
            campaign=cmd.campaign,
            unattributed=True,
            recorded_by=revoked.recorded_by,
            stated_at=revoked.stated_at,
        )
    ]


# Unicode's Default_Ignorable_Code_Point characters that are no format character
# (Cf): they show nothing, so "acme" with a Hangul filler or a variation selector
# pasted after it reads as acme, and an opt-out under it was held under no brand.
_IGNORABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0"
    "\ufff0-\ufff8\U000e0000-\U000e0fff]"
)


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or _IGNORABLE.fullmatch(ch) is not None


def _loose_name(value: str) -> str:
    """The name ``value`` spells to a reader: its full-width or other compatibility
    letters as plain ones, its invisible format characters (a zero-width space pasted
    with it) dropped, trimmed of spaces and of separators typed after or before it
    ("acme."), and in lower case."""
    plain = unicodedata.normalize("NFKC", value)
    kept = "".join(ch for ch in plain if not _invisible(ch))
    return kept.strip().strip("._-").strip().lower()


@dataclass(frozen=True)
class HoldRefusedOptOut:
    """Keep an opt-out that an import refused for its details (no channel, a bad time,
    an import id taken by another record) as a candidate for review: a wrong allow
    costs far more than a wrong deny, so its number is denied until someone resolves
    it, as a ``RecordOptOut`` of an undefined campaign is.

    ``record`` is a digest of everything the refused record said: with its import id
    and brand it names the hold, so a re-run of the same file holds it once."""

    import_id: str
    phone: str
    brand: str
    record: str
    campaign: str | None = None
    via: str = ""
    """The live request refused (``RecordOptOut``, ``HandleInboundMessage``), whose
    request id ``import_id`` then is; empty for an import's record."""
    reused_id: bool = False
    """A live request refused because its request id was used before for another
    request, not for a detail: its hold says so (``REUSED_ID_PREFIX``)."""
    occurred_at: datetime | None = None
    """The opt-out's own time, when it can be read: the hold is placed there, not at
    the time it was refused (``held_opt_out``)."""
    unread_brand: bool = False
    """The brand it named could not be read (left out, blank, no name): ``brand`` is
    one of the caller's instead, ``ANY_BRAND`` for a caller of every brand."""

    def __post_init__(self) -> None:
        # An export's "acme " or "ACME" is refused as a brand (a name is matched
        # whole), but it is acme that the person asked to stop: held under no
        # brand, the opt-out was dropped while the number's opt-in went in. A hold
        # only denies, so it is kept under the brand the record spells.
        loose = _loose_name(self.brand)
        if not is_name(self.brand) and is_name(loose):
            object.__setattr__(self, "brand", loose)

    @property
    def request_id(self) -> str:
        """The hold's own id, apart from the record's import id (which another record
        may hold), derived from the record as an import id is from its content."""
        said = f"{self.brand}\0{self.import_id}\0{self.record}"
        if self.via:
            # Not the client's request id, which its corrected retry then takes.
            said = f"{self.via}\0{said}"
            prefix = REUSED_ID_PREFIX if self.reused_id else REFUSED_PREFIX
            return f"{prefix}{hashlib.sha256(said.encode()).hexdigest()[:32]}"
        return f"held-{hashlib.sha256(said.encode()).hexdigest()[:32]}"


HELD_FOR_REVIEW = (
    "held for review: the number is denied for the brand until someone resolves it "
    "(ListRevocationCandidates, ResolveRevocationCandidate)"
)
"""What a refusal of a held opt-out adds to its reason."""


# 0011 is Australia's: read as 00, its 1 was read as the country code and no
# number was found. No number follows 00 1 1 (no area code starts with 1).
_INTERNATIONAL_PREFIX = re.compile(r"^(?:0011|011|00)")
_NANP_NATIONAL_DIGITS = 10
"""A North American number without its country code: area code, exchange, line."""


def _held_numbers(raw: str) -> list[str]:
    """The numbers a refused opt-out is held under: its number as E.164, or else
    every number its digits may be read as: with their country code and no "+" (a
    spreadsheet drops a leading "+"), after an international prefix (00, or 011
    from North America) if any; and, for ten digits, a North American number
    written without its country code, as at home ((415) 555-2671). A number must
    carry its "+" to be recorded, so the record stays refused; but a hold only
    denies, and the opt-in of the same number, written with its "+", would
    otherwise stand. Some ten digits read both ways ((646) 555-2671 is also
    +64 6555 2671): held under one reading only, the other number stayed allowed."""
    try:
        return [to_e164(raw)]
    except InvalidPhoneNumber as refused:
        plain = _number_in(raw)
        if plain != raw:
            with contextlib.suppress(InvalidPhoneNumber):
                return [to_e164(plain)]
        old_form = _without_old_mobile_1(plain) or _with_ninth_digit(plain)
        if old_form is not None:
            with contextlib.suppress(InvalidPhoneNumber):
                return [to_e164(old_form)]
        numbers = _digit_readings(plain) or _numbers_among_words(plain)
        if not numbers:
            raise refused from None
        return numbers


# A "tel:" link's scheme, and what follows a number on its line: a link's
# parameters (";ext=12", ";phone-context=..."), or an extension ("ext. 12", "x12",
# "#12"). A number written so is refused, an extension having no text; but the
# person asked the line to stop, and a hold under no number left it allowed.
_TEL_SCHEME = re.compile(r"^\s*tel:", re.IGNORECASE)
_AFTER_NUMBER = re.compile(r"(?:;.*|\s*(?:ext\.?|extension|x|#)\s*\d+\s*)$", re.IGNORECASE)
# How a spreadsheet keeps a number as text: a leading apostrophe ('+14155552671) or
# a formula that yields it (="+14155552671"); and how a column of numbers read as
# floats writes it (14155552671.0). The person asked that number to stop.
_KEPT_AS_TEXT = re.compile(r"""^\s*(?:'(?P<quoted>.*)|=\s*"(?P<formula>[^"]*)"\s*)$""", re.DOTALL)
_AS_FLOAT = re.compile(r"^(\s*\+?\d+)\.0+\s*$")


def _number_in(raw: str) -> str:
    """The number ``raw`` names to a reader: its invisible characters (bidi marks a
    right-to-left sheet puts around it, a zero-width space) dropped, its control
    characters read as spaces, a spreadsheet's text marks and a float's ".0", a
    "tel:" link's scheme and parameters and an extension cut off."""
    # A NUL padding a fixed-width field, a line break inside a cell or a DEL shows
    # nothing of the number either; read as nothing, the STOP was lost with it.
    shown = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in raw)
    plain = "".join(ch for ch in shown if not _invisible(ch))
    if kept := _KEPT_AS_TEXT.match(plain):
        plain = kept.group("quoted") or kept.group("formula") or ""
    plain = _AS_FLOAT.sub(r"\1", plain)
    return _AFTER_NUMBER.sub("", _TEL_SCHEME.sub("", plain)).strip()


_MEXICO_OLD_MOBILE_DIGITS = 13
"""+52, the old mobile "1" and a ten-digit national number."""


def _without_old_mobile_1(raw: str) -> str | None:
    """A Mexican mobile written with the "1" Mexico dropped after +52 in 2019 (+52 1
    55 1234 5678), as the number it is now (+52 55 1234 5678); else None. The old
    form is no valid number, but gateways and old exports still write it."""
    digits = "".join(ch for ch in raw if ch.isdecimal())
    plus = raw.lstrip().startswith("+")
    if plus and digits.startswith("521") and len(digits) == _MEXICO_OLD_MOBILE_DIGITS:
        return "+52" + digits[3:]
    return None


_BRAZIL_OLD_MOBILE_DIGITS = 12
"""+55, a two-digit area code and the eight digits of a mobile before its 9."""


def _with_ninth_digit(raw: str) -> str | None:
    """A Brazilian mobile written without the 9 Brazil put before every mobile's eight
    digits by 2016 (+55 11 8765 4321), as the number it is now (+55 11 9 8765 4321);
    else None. The old form is no valid number, but old exports and contacts still
    write it; one that is a valid (fixed) number is read as that, never here."""
    digits = "".join(ch for ch in raw if ch.isdecimal())
    plus = raw.lstrip().startswith("+")
    if plus and digits.startswith("55") and len(digits) == _BRAZIL_OLD_MOBILE_DIGITS:
        return f"+{digits[:4]}9{digits[4:]}"
    return None


def _digit_readings(raw: str) -> list[str]:
    """``_held_numbers``' readings of digits written without a "+", or with one before
    an international prefix (none if ``raw`` has another "+", or holds more than
    digits and the punctuation numbers are written with)."""
    digits = "".join(ch for ch in raw if ch.isdecimal())
    plus = raw.lstrip().startswith("+") and raw.count("+") == 1
    if plus and _INTERNATIONAL_PREFIX.match(digits):
        # "+00 1 ...", "+011 44 ...": a "+" put before a dialled international prefix
        # is refused (E.164 has no 00), but the number after the prefix is plain.
        raw = raw.replace("+", "", 1)
    elif plus and digits.startswith("0"):
        # "+01 415 ...", "+044 20 ...": no country code starts with 0, so the zeros
        # are a slip; refused and held under no number, the opt-out left the line
        # its digits name allowed.
        raw = raw.replace("+", "", 1)
        digits = digits.lstrip("0")
    written = all(ch.isdecimal() or ch in " -()./" for ch in raw)
    if "+" in raw or not digits or not written:
        return []
    candidates = ["+" + _INTERNATIONAL_PREFIX.sub("", digits)]
    if len(digits) == _NANP_NATIONAL_DIGITS:
        candidates.append("+1" + digits)
    numbers: list[str] = []
    for candidate in candidates:
        with contextlib.suppress(InvalidPhoneNumber):
            number = to_e164(candidate)
            if number not in numbers:
                numbers.append(number)
    return numbers


# A run of digits and the marks numbers are written with, in a cell that holds more.
_NUMBER_RUN = re.compile(r"[\d\s()./+-]+")


def _numbers_among_words(raw: str) -> list[str]:
    """The numbers ``raw`` names among other words or marks ("+1 415 555 2671 x", an
    extension left empty; "(mobile)"; "cell: 415 555 2671"; a second number in the
    cell): each found with its country code, else each run of its digits read as
    ``_digit_readings`` reads digits alone. Refused as no number, such an opt-out was
    held under none, and the number's opt-in stood; a hold only denies, so it is held
    under every number the cell may mean."""
    numbers = numbers_in(raw)
    if numbers:
        return numbers
    for run in _NUMBER_RUN.findall(raw[:NUMBERS_READ_IN]):
        numbers += [n for n in _digit_readings(run.strip()) if n not in numbers]
    return numbers


HELD_OPT_OUT = "RecordOptOut"
HELD_INBOUND = "HandleInboundMessage"
"""``HoldRefusedOptOut.via`` of a live request's hold."""
HELD_INTENTS = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE})
"""How an inbound text refused for its details must read to be held: as a STOP, or
as a reply that reads like one (which a text recorded would flag for review too)."""
HELD_BODY_READ = 65_536
"""Characters of a refused text read for a STOP: past the limit a text may have, not
past what a gateway could send; a STOP is read whole or not at all."""


def held_intent(body: str) -> Intent:
    """How a text refused for its details reads: its NULs read as spaces (a gateway's
    padding says nothing of what the person wrote)."""
    return classify(body[:HELD_BODY_READ].replace("\0", " "))


def held_words(refused: str, why: str, brand: str) -> str:
    """The words of a refused opt-out's hold under ``brand``, one of several brands it
    is held under for ``why`` (none: ``refused`` alone). Each names its own brand only:
    a brand's readers see their hold's words, and one that listed every brand held
    told them which other brands, of the same caller, hold the number too."""
    return f"{refused}; {why}: held as {[brand]}" if why else refused


def held_opt_out(cmd: HoldRefusedOptOut, refused: str, now: datetime) -> list[LedgerEvent]:
    """The candidate that keeps ``cmd``, flagged at the opt-out's own time when it
    can be read and is no later than ``now``, else ``now`` (the time may be what was
    wrong with it); ``refused`` says why the record was refused. Raises
    ``InvalidRequest`` when its number or brand cannot be read: nothing to hold.

    An import learns of an opt-out after it happened, and so may a live write (a
    backfill, a gateway delivering a STOP late): flagged when refused, the
    history said the number could be texted between the two, and an audit of a send
    then (``CanSendAsOf``) read "allowed" once the opt-out was known. Its deadline
    is counted from its own time too, as a revocation's is from when it came.

    A hold may be for every brand (``ANY_BRAND``): a STOP to a number no campaign
    sends from is kept so when refused, as when recorded, and an opt-out that names
    no brand that can be read, from a caller of every brand, is held so. A brand
    named "*" is no brand to hold it under."""
    live = bool(cmd.via)
    every = cmd.via == HELD_INBOUND or cmd.unread_brand
    at = _held_at(cmd.occurred_at, now)
    brand = cmd.brand if every and cmd.brand == ANY_BRAND else check_name(cmd.brand, "brand")
    phones = _held_numbers(cmd.phone)
    campaign = cmd.campaign if cmd.campaign is not None and is_name(cmd.campaign) else None
    if live:
        why = "a request id used before" if cmd.reused_id else "its details"
        text = f"{cmd.via} opt-out refused for {why} ({refused})"
    else:
        text = f"opt-out {cmd.import_id!r} refused at import ({refused})"
    if len(phones) > 1:
        # Each hold is reviewed alone: say it has siblings, for the reviewer to find.
        text = f"{text}; its number reads as {' and as '.join(phones)}: held under each"
    # One candidate per reading, each its own event id (its index): a retry of the
    # request holds each once.
    keyed = hold_keyed(cmd)
    return [
        RevocationCandidateFlagged(
            **_base(keyed, i, at, brand),
            phone=phone,
            brand=brand,
            inbound_message_id="",
            text=text[: TEXT_LIMITS["text"]],
            campaign=campaign,
            stated_at=_held_stated(cmd.occurred_at, now),
        )
        for i, phone in enumerate(phones)
    ]


def hold_keyed(cmd: HoldRefusedOptOut) -> HoldRefusedOptOut:
    """What a hold's ids and fingerprint are made from. A live hold's leave its time
    out, as they did before it was placed there (its ``record`` digests the whole
    request, time included), so a retry of a request held by an earlier version,
    under either fingerprint, is that hold."""
    return dataclasses.replace(cmd, occurred_at=None) if cmd.via else cmd


def _held_at(occurred_at: datetime | None, now: datetime) -> datetime:
    """Where a hold goes: the opt-out's own time if it reads as one, never later
    than ``now`` (a hold placed ahead would deny nothing until then)."""
    if occurred_at is None:
        return now
    try:
        return min(check_time(occurred_at, now), now)
    except DomainError:
        return now


def _held_stated(occurred_at: datetime | None, now: datetime) -> datetime | None:
    """The opt-out's own time when it reads as one and is ahead of ``now`` (``_held_at``
    placed the hold at ``now``), kept on the hold: a "revoked" takes effect no earlier."""
    if occurred_at is None:
        return None
    try:
        return stated_if_ahead(check_time(occurred_at, now), now)
    except DomainError:
        return None


def revoked_after_held(
    events: Sequence[LedgerEvent], held: RevocationCandidateFlagged, now: datetime
) -> list[LedgerEvent]:
    """``events``, a resolution of ``held``, with a "revoked" one's ConsentRevoked
    taking effect no earlier than the words held said they happened (``held.stated``).

    A hold stamped ahead was placed when recorded, earlier than it said; revoked at
    the reviewer's time, with none kept, an opt-in stated between the hold's place
    and its time, sent after the resolution, was recorded and outranked it, though
    by the records' own times the opt-out is the later word. Only the revocation's
    times change: its ids and fingerprint, built from the request, stay a retry's."""
    out = list(events)
    for i, e in enumerate(out):
        if isinstance(e, ConsentRevoked) and held.stated > e.stated:
            out[i] = dataclasses.replace(
                e,
                occurred_at=consent_time(held.stated, now),
                stated_at=stated_if_ahead(held.stated, now),
            )
    return out


COVERED_PREFIX = "covered-"
"""Starts the request id of a held opt-out's resolution by an opt-out that covers it
(``covered_hold_resolved``)."""


def covers(
    revoked: ConsentRevoked, hold: RevocationCandidateFlagged, *, every_campaign: bool = False
) -> bool:
    """Whether the recorded opt-out ``revoked`` says at least what the opt-out held
    for its details (``hold``) does: the same number, the same brand, and every
    campaign of it. A hold denies every campaign of its brand, so an opt-out of one
    campaign leaves it to a reviewer, who can tell whether the person meant only that
    one; unless ``every_campaign`` (the revoke-all rule is in force for the campaign
    it names: it revokes them all).

    The hold is a live one (``RevocationCandidateFlagged.refused``), or an import's
    record refused (``imported``, not ``unattributed``) when ``revoked`` was imported
    too: its corrected record re-imported otherwise left it denying every campaign,
    and an opt-in after it, where the same opt-out written resolved its own hold. A
    live opt-out leaves an import's hold to a reviewer: resolved so, the hold's
    "revoked" would be the number's latest opt-out and, an import's, owe no
    confirmation, taking the live opt-out's own away."""
    return (
        (hold.refused or (hold.imported and not hold.unattributed and revoked.imported))
        and (revoked.campaign is None or every_campaign)
        and revoked.phone == hold.phone
        and revoked.brand == hold.brand
    )


def covered_hold_resolved(
    revoked: ConsentRevoked, hold: RevocationCandidateFlagged, now: datetime
) -> list[LedgerEvent]:
    """The resolution of ``hold`` by ``revoked``, which ``covers`` it: "revoked" at
    ``now``, as a reviewer would resolve it, its ``resolved_by`` naming the opt-out.

    Not "dismissed": the hold stood for a STOP whose own time the service could not
    trust (often the very detail refused), and the opt-out recorded since may carry an
    earlier time than the STOP had, with an opt-in between them. "Revoked" revokes
    the brand again at ``now``, so closing the hold allows nothing it denied; only
    consent given after it does, as after any opt-out. Its request id digests the
    hold and the opt-out: a retry of that opt-out resolves it once."""
    said = f"{hold.event_id}\0{revoked.event_id}"
    resolve = ResolveRevocationCandidate(
        request_id=f"{COVERED_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}",
        phone=hold.phone,
        brand=hold.brand,
        candidate_event_id=str(hold.event_id),
        resolution=CandidateResolution.REVOKED,
        occurred_at=now,
        resolved_by=f"opt-out {revoked.event_id}",
    )
    return revoked_after_held(to_events(resolve, now), hold, now)


def handle_unowned_inbound(
    cmd: HandleInboundMessage, brand: str, now: datetime
) -> InboundOutcome | None:
    """An inbound text to a number no campaign sends from, for ``brand`` (the caller's
    one brand, or ``ANY_BRAND``): a STOP, or a reply that reads like one, is recorded
    with the number it reached; None for any other text, which nothing needs kept."""
    check_request_id(cmd.request_id)
    check_time(cmd.occurred_at, now)
    if not cmd.message_id:
        raise InvalidRequest("message_id", "is required")
    check_length(cmd.message_id, "message_id")
    check_length(cmd.body, "body")
    phone = to_e164(cmd.from_phone, field="from_phone")
    to = to_e164(cmd.to_phone, field="to_phone")
    intent = classify(cmd.body)
    if intent not in (Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE):
        return None
    at = consent_time(cmd.occurred_at, now)
    events: list[LedgerEvent] = [
        InboundMessageReceived(
            **_base(cmd, 0, at, brand),
            phone=phone,
            brand=brand,
            message_id=cmd.message_id,
            to_number=to,
            body=cmd.body,
        ),
        RevocationCandidateFlagged(
            **_base(cmd, 1, at, brand),
            phone=phone,
            brand=brand,
            inbound_message_id=cmd.message_id,
            text=cmd.body,
            to_number=to,
            unattributed=intent is not Intent.REVOCATION_CANDIDATE,
            stated_at=stated_if_ahead(cmd.occurred_at, now),
        ),
    ]
    whose = "every brand" if brand == ANY_BRAND else f"brand {brand}"
    return InboundOutcome(
        events,
        intent=intent,
        brand="" if brand == ANY_BRAND else brand,
        notes=[
            f"no campaign sends from {to}: recorded for review, and sends of {whose} to "
            f"{phone} are denied until it is resolved"
        ],
    )
