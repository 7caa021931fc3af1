"""A number's facts under every spelling they were recorded under.

A version before numbers were brought to one form (``ledger.phone.forms_stored_before``)
kept +54 11 1234 5678 apart from +54 9 11 1234 5678, and Gabon's old numbers apart
from their new ones. Those facts stay in the old spelling's partition; a
check folds them in (``ledger.policy.as_one_number``), and so does every read here,
so a reply, a write's checks and an audit read count what CanSend counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ledger.events import LedgerEvent, LedgerPosition, Recorded, SubscriberEvent
from ledger.phone import KEPT_FORMS, forms_stored_before
from ledger.policy import as_one_number
from ledger.ports import ConsentView
from ledger.state import Fact, SubscriberState, fold

E = TypeVar("E", bound=LedgerEvent)


def in_ledger_order(own: Sequence[Recorded], earlier: Sequence[Recorded]) -> list[Recorded]:
    """A number's facts (``own``) and those of its earlier spellings, each as recorded,
    in ledger order: by position when there are none of the others (one partition),
    else in the order ``as_one_number`` folds them in (``recorded_at``, each
    partition's own order kept)."""

    def by_position(r: Recorded) -> tuple[int, int]:
        return (r.position.partition, r.position.offset)

    facts = sorted(own, key=by_position)
    if not earlier:
        return facts
    return sorted([*facts, *sorted(earlier, key=by_position)], key=lambda r: r.recorded_at)


async def earlier_history(view: ConsentView, number: str, brand: str | None) -> list[Recorded]:
    """The facts recorded under ``number``'s earlier spellings towards ``brand`` (None:
    every brand's), each as recorded."""
    found: list[Recorded] = []
    for form in forms_stored_before(number):
        found += await view.history(form, brand)
    return found


@dataclass(frozen=True)
class OneNumber:
    """A number's state towards a brand with its earlier spellings' facts folded in,
    and those facts as they were recorded, to show each under its own spelling."""

    state: SubscriberState
    recorded_as: Mapping[LedgerPosition, LedgerEvent] = field(default_factory=dict)
    """The facts of ``state`` recorded under another spelling, by position."""

    def as_recorded(self, fact: Fact[E] | None) -> Fact[E] | None:
        """``fact`` under the spelling it was recorded under (the fold names ``number``)."""
        if fact is None or fact.position not in self.recorded_as:
            return fact
        event: E = self.recorded_as[fact.position]  # type: ignore[assignment]  # same event
        return Fact(event, fact.position, fact.recorded_at)


async def state_as_one(view: ConsentView, number: str, brand: str) -> OneNumber:
    """``number``'s state towards ``brand`` (``ANY_BRAND`` included, as any brand):
    the view's when no earlier spelling of it has facts towards ``brand``, else the
    fold of both spellings' facts as if recorded under ``number``, as CanSend folds
    them (``services.usecases.checks.Checks._history_as_one``)."""
    earlier = [
        r
        for r in await earlier_history(view, number, brand)
        if isinstance(r.event, SubscriberEvent)
    ]
    if not earlier:
        return OneNumber((await view.subscriber_states(brand, [number]))[number])
    own = [r for r in await view.history(number, brand) if isinstance(r.event, SubscriberEvent)]
    facts = as_one_number(in_ledger_order(own, earlier), number)
    state = fold(facts, SubscriberState(phone=number, brand=brand))
    return OneNumber(state, {r.position: r.event for r in earlier})


async def earlier_message_uses(
    view: ConsentView, brand: str, sends: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Of ``sends`` (phone, provider message id), those an earlier version recorded
    under the phone's other spelling: each first send's event id, by the key asked.
    Keyed by the spelling it was recorded under, such a send is not found under the
    number's own, and recorded again it would count twice in the fold of both."""
    asked = {
        (form, m): (phone, m)
        for phone, m in sends
        if phone.startswith(KEPT_FORMS)  # the few numbers ever spelt two ways, cheaply
        for form in forms_stored_before(phone)
    }
    if not asked:
        return {}
    found = await view.message_uses(brand, list(asked))
    return {asked[key]: event_id for key, event_id in found.items()}
