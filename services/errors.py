"""Errors of the service layer that are not rule violations of the domain.

The gRPC edge maps each class to one status code, in one place
(``services.grpc_api.errors``)."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.commands import HELD_FOR_REVIEW
from ledger.errors import DomainError


class ServiceError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class FailedPrecondition(ServiceError):
    """The request is well-formed but the system is not in a state to accept it
    (an unknown campaign, a number no campaign sends from). ``more``: every other
    field of the request refused for the same kind of reason, named in the same
    answer (the messages of a batch naming undefined campaigns)."""

    def __init__(self, field: str, reason: str, *, more: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(field, reason)
        self.violations: tuple[tuple[str, str], ...] = ((field, reason), *more)


class NotFound(FailedPrecondition):
    """What an audit read names does not exist (a campaign never defined): NOT_FOUND,
    so that a misspelt name cannot pass for a clean record. A precondition of the
    read, hence the base class: whoever handles those handles this."""

    def __init__(self, field: str, reason: str, resource_type: str, resource_name: str) -> None:
        super().__init__(field, reason)
        self.resource_type = resource_type
        self.resource_name = resource_name


def campaign_not_found(brand: str, campaign: str) -> NotFound:
    name = f"{brand}/{campaign}"
    return NotFound("campaign", f"{name} is not defined", "consent.v1.Campaign", name)


class Refused(FailedPrecondition):
    """A precondition refusal with a reason a client can branch on
    (``google.rpc.ErrorInfo``) and what it needs to act on it (``metadata``): an
    erasure inside the retention period or under a legal hold, with the date from
    which it is possible."""

    def __init__(
        self, field: str, reason: str, error_reason: str, metadata: dict[str, str]
    ) -> None:
        super().__init__(field, reason)
        self.error_reason = error_reason
        self.metadata = metadata


class AlreadyExists(ServiceError):
    """A request id of the brand was used before for another request: refused, and
    nothing recorded. ``event_ids`` are the facts of that first request."""

    def __init__(self, field: str, reason: str, request_id: str, event_ids: Sequence[str]) -> None:
        super().__init__(field, reason)
        self.request_id = request_id
        self.event_ids = tuple(event_ids)


class MessageIdReused(AlreadyExists):
    """A provider message id recorded before for the number and brand, sent again
    saying something else of the message: refused, and nothing recorded. A message
    recorded is not changed by recording it again; ``event_ids`` is its
    ``MessageSent``. ``more``: every other message of the same call refused so, in
    the call's order (a caller told of one at a time would find the next only on its
    next try)."""

    def __init__(
        self,
        field: str,
        reason: str,
        message_id: str,
        event_ids: Sequence[str],
        *,
        more: Sequence[MessageIdReused] = (),
    ) -> None:
        super().__init__(field, reason, "", event_ids)
        self.message_id = message_id
        self.more = tuple(more)


def refuse_every(refused: Sequence[MessageIdReused]) -> None:
    """Raise the first of ``refused`` (a call's messages, in its order) naming the
    others too; nothing when there are none."""
    if refused:
        first, *more = refused
        raise MessageIdReused(
            first.field, first.reason, first.message_id, first.event_ids, more=more
        )


class ShuttingDown(ServiceError):
    """The server is stopping: a long call (a change stream) ends so that its client
    goes on elsewhere, from where it was."""


class NotConsistent(ServiceError):
    """The read model did not reach the requested freshness within the bound."""


class AccessNotRecorded(ServiceError):
    """An audit read whose access record could not be written: refused, unread
    (UNAVAILABLE, retryable), for no audit read may go unrecorded."""


class PermissionDenied(ServiceError):
    """The caller is authenticated but may not do this (scope or brand)."""


class Unauthenticated(ServiceError):
    """No credentials, or credentials nobody issued."""


class RateLimited(ServiceError):
    """The caller has used up its rate limit; it may call again in ``retry_after``
    seconds."""

    def __init__(self, caller: str, reason: str, retry_after: float) -> None:
        super().__init__("caller", reason)
        self.caller = caller
        self.retry_after = retry_after


class StoreUnavailable(ConnectionError):
    """PostgreSQL did not answer within ``CONSENT_POSTGRES_TIMEOUT_MS`` (frozen,
    unreachable or overloaded). Nothing was written by the query that timed out."""


class OutcomeUnknown(ConnectionError):
    """A write was not acknowledged within its bound (the caller's deadline or
    ``CONSENT_WRITE_TIMEOUT_MS``). It may still be recorded: a retry with the same
    ``request_id`` records nothing twice."""


class HeldForReview(DomainError):
    """A live opt-out (``RecordOptOut``, an inbound STOP) refused for its details, and
    held for review all the same: the number is denied for the brand until someone
    resolves the hold. Answered as the refusal was (INVALID_ARGUMENT, every bad field)
    with ``error_reason`` and the hold's candidate id and consistency token in the
    ``ErrorInfo``'s metadata, so a client need not read the text: ``candidate_event_id``
    the first hold, ``candidate_event_ids`` every one (comma-separated), as a number
    written without its "+" may be held under more than one reading of it, and
    ``held_brands`` the brands they are held under (comma-separated, "*" for every
    brand), which one that named no brand that can be read was held under for each
    of the caller's: the queues (``ListRevocationCandidates``) it must review."""

    error_reason = "OPT_OUT_HELD_FOR_REVIEW"

    def __init__(
        self,
        refused: DomainError,
        candidate_event_ids: Sequence[str],
        token: str,
        brands: Sequence[str],
    ) -> None:
        (field, reason), *more = refused.violations
        super().__init__(field, f"{reason}; {HELD_FOR_REVIEW}", *more)
        self.metadata = _held_metadata(candidate_event_ids, token, brands)


def _held_metadata(
    candidate_event_ids: Sequence[str], token: str, brands: Sequence[str]
) -> dict[str, str]:
    return {
        "candidate_event_id": candidate_event_ids[0],
        "candidate_event_ids": ",".join(candidate_event_ids),
        "consistency_token": token,
        "held_brands": ",".join(dict.fromkeys(brands)),
    }


class PreconditionHeldForReview(Refused):
    """A delivery outcome refused on a precondition (its message not recorded as sent
    to the number) whose error code says the recipient opted out at the provider,
    held for review all the same, as ``HeldForReview`` is: answered
    FAILED_PRECONDITION as the refusal was, with ``HeldForReview``'s
    ``error_reason`` and metadata in an ``ErrorInfo``."""

    def __init__(
        self,
        refused: FailedPrecondition,
        candidate_event_ids: Sequence[str],
        token: str,
        brands: Sequence[str],
    ) -> None:
        super().__init__(
            refused.field,
            f"{refused.reason}; {HELD_FOR_REVIEW}",
            HeldForReview.error_reason,
            _held_metadata(candidate_event_ids, token, brands),
        )


class ReusedIdHeldForReview(AlreadyExists):
    """A live opt-out refused because its request id was used before for another
    request (a client's bug), held for review all the same, as ``HeldForReview`` is:
    answered ALREADY_EXISTS naming what the id recorded, plus an ``ErrorInfo`` with
    ``error_reason`` and the hold's ``metadata``."""

    error_reason = HeldForReview.error_reason

    def __init__(
        self,
        refused: AlreadyExists,
        candidate_event_ids: Sequence[str],
        token: str,
        brands: Sequence[str],
    ) -> None:
        reason = f"{refused.reason}; {HELD_FOR_REVIEW}"
        super().__init__(refused.field, reason, refused.request_id, refused.event_ids)
        self.metadata = _held_metadata(candidate_event_ids, token, brands)
