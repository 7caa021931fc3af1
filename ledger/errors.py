"""Rule violations the domain raises. Each names the field it is about, so the
edge can turn it into a field-level ``INVALID_ARGUMENT`` without guessing."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: a request the domain refuses, with the offending field, and with
    every other bad field of the same request when there are several
    (``ledger.validation.Violations`` gathers them): ``violations`` holds each
    (field, reason), the first being ``field`` and ``reason``."""

    error_reason = ""
    """A reason a client can branch on (``google.rpc.ErrorInfo``), for the refusals that
    need one beyond the field; empty for plain bad input."""

    def __init__(self, field: str, reason: str, *more: tuple[str, str]) -> None:
        self.violations: tuple[tuple[str, str], ...] = ((field, reason), *more)
        super().__init__("; ".join(f"{f}: {r}" for f, r in self.violations))
        self.field = field
        self.reason = reason
        self.metadata: dict[str, str] = {}


class InvalidPhoneNumber(DomainError):
    """The text is not a valid, dialable phone number."""


class PurchasedListError(DomainError):
    """Consent from a purchased, rented or shared list: consent cannot be bought."""


class MissingProofError(DomainError):
    """The proof of opt-in lacks a field its collection method needs."""


class InvalidCampaignPolicy(DomainError):
    """A campaign policy that is inconsistent (a window that ends before it starts...)."""


class InvalidRequest(DomainError):
    """Any other request field that is missing or malformed."""


class ProhibitedContent(DomainError):
    """A campaign of a category the provider never allows (cannabis, CBD, prescription
    drugs offered without a prescription...), whatever consent it may have."""

    error_reason = "CONTENT_PROHIBITED"

    def __init__(self, field: str, reason: str, category: str) -> None:
        super().__init__(field, reason)
        self.metadata = {"category": category}
