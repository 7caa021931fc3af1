"""Bulk import (``services.usecases.imports``) on the in-memory adapters: each record
checked as its write would be and refused on its own, each import id recorded once,
a chunk appended in one call, its opt-outs first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from ledger.commands import (
    HELD_FOR_REVIEW,
    HoldRefusedOptOut,
    RecordOptOut,
    ResolveRevocationCandidate,
)
from ledger.errors import InvalidRequest
from ledger.events import (
    CandidateResolution,
    ConsentGranted,
    ConsentRevoked,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationChannel,
)
from ledger.policy import Reason
from ledger.ports import AppendTurn, ConsistencyToken, LedgerUnavailable, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.errors import PermissionDenied, StoreUnavailable
from services.usecases import UseCases
from services.usecases import imports as imports_module
from services.usecases.imports import MAX_CHUNK, ChunkResult, Code, Imports, Item, TurnPruning
from tests.builders import BRAND, at, proof
from tests.builders import opt_in as an_opt_in
from tests.unit.usecase_harness import AUDITOR, NOW, App, define, ledger_at_now, running, stop_task

pytestmark = pytest.mark.asyncio(loop_scope="session")


def opt_in(i: int, phone: str, minutes: int = 0, **changes: object) -> Item:
    cmd = an_opt_in(at(minutes), request_id=f"imp-{i}", phone=phone, **changes)
    return Item(i, cmd, request_id=cmd.request_id)


def opt_out(i: int, phone: str, minutes: int, campaign: str | None = "promo") -> Item:
    cmd = RecordOptOut(
        f"imp-{i}", phone, BRAND, campaign, RevocationChannel.KEYWORD, at(minutes), "STOP"
    )
    return Item(i, cmd, request_id=cmd.request_id)


async def test_a_chunk_records_the_good_records_and_refuses_each_bad_one_by_field():
    async with running() as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        items = [
            opt_in(0, "+14155550100"),
            opt_in(1, "not a phone"),
            opt_in(2, "+14155550102", proof=proof(at(0), ip_address="", form_url="")),
            opt_in(3, "+14155550103", campaign="nope"),
            Item(4, None, InvalidRequest("occurred_at", "is required"), request_id="imp-4"),
            opt_out(5, "+14155550105", 1),
        ]

        result = await imports.chunk(items)

        assert (result.imported, result.present) == (2, 0)
        refused = {r.index: (r.code, r.violations[0][0]) for r in result.refusals}
        assert refused == {
            1: (Code.INVALID_ARGUMENT, "phone"),
            2: (Code.INVALID_ARGUMENT, "proof.ip_address"),
            3: (Code.FAILED_PRECONDITION, "campaign"),
            4: (Code.INVALID_ARGUMENT, "occurred_at"),
        }
        assert [r.request_id for r in result.refusals] == ["imp-1", "imp-2", "imp-3", "imp-4"]
        written = await app.ledger.read(Stream.SUBSCRIBERS, 0, 0) + [
            r for p in range(1, 4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)
        ]
        assert sorted(type(r.event).__name__ for r in written) == [
            "ConsentGranted",
            "ConsentRevoked",
        ]


async def test_an_imported_opt_in_whose_proof_is_a_placeholder_or_does_not_parse_is_refused():
    # An export's "N/A" and "-" for what it never had were imported as proof.
    async with running() as (app, _):
        await app.writes.record(define())
        items = [
            opt_in(0, "+14155550100", proof=proof(at(0), name="N/A", screenshot_ref="-")),
            opt_in(1, "+14155550101", proof=proof(at(0), ip_address="203.0.113.7:443")),
            opt_in(2, "+14155550102", proof=proof(at(0), form_url="acme.example/join")),
        ]

        result = await _imports(app).chunk(items)

        assert result.imported == 0
        refused = {r.index: (r.code, [f for f, _ in r.violations]) for r in result.refusals}
        assert refused == {
            0: (Code.INVALID_ARGUMENT, ["proof.name", "proof.screenshot_ref"]),
            1: (Code.INVALID_ARGUMENT, ["proof.ip_address"]),
            2: (Code.INVALID_ARGUMENT, ["proof.form_url"]),
        }


async def test_an_imported_placeholder_in_a_proof_field_its_method_does_not_need_is_dropped():
    # The wording given, its hash and version are not needed: an export's "N/A" for
    # them was recorded as sent, where RecordOptIn and the CLI's import alike now
    # record the field left empty, as it is read.
    async with running() as (app, _):
        await app.writes.record(define())
        given = proof(at(0), consent_text_sha256="N/A", consent_text_version="-")

        result = await _imports(app).chunk([opt_in(0, "+14155550100", proof=given)])

        assert (result.imported, result.refusals) == (1, [])
        written = [
            r.event for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)
        ]
        (granted,) = [e for e in written if isinstance(e, ConsentGranted)]
        assert (granted.proof.consent_text_sha256, granted.proof.consent_text_version) == ("", "")
        assert granted.proof.consent_text == given.consent_text


async def test_re_running_an_import_writes_nothing_new():
    async with running() as (app, _):
        await app.writes.record(define())
        items = [opt_in(i, f"+1415555{i:04d}") for i in range(20)]
        first = await _imports(app).chunk(items)
        assert first.imported == 20
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

        again = await _imports(app).chunk(items)

        assert (again.imported, again.present, again.refusals) == (0, 20, [])
        assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_import_id_reused_for_another_record_is_refused():
    async with running() as (app, _):
        await app.writes.record(define())
        await _imports(app).chunk([opt_in(0, "+14155550100")])

        other = opt_in(0, "+14155550199")  # same import id, another number
        twice = [opt_in(1, "+14155550101"), opt_in(1, "+14155550101", minutes=5)]
        result = await _imports(app).chunk([other, *twice])

        assert result.imported == 1
        assert [(r.index, r.code, r.violations[0][0]) for r in result.refusals] == [
            (0, Code.ALREADY_EXISTS, "request_id"),
            (1, Code.ALREADY_EXISTS, "request_id"),
        ]


async def test_of_two_records_under_one_id_in_two_chunks_the_earlier_chunks_is_kept():
    """Chunks are worked on at once; the first to claim an id used to keep it. The
    first chunk's claim is held back here, so without the turn the second wins."""
    async with running() as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        claim, calls = app.view.claim_requests, []

        async def first_held(claims):  # type: ignore[no-untyped-def]
            calls.append(claims)
            if len(calls) == 1:
                await asyncio.sleep(0.1)
            return await claim(claims)

        app.view.claim_requests = first_held  # type: ignore[method-assign]
        earlier, later = opt_in(0, "+14155550100"), opt_in(0, "+14155550199")
        first, second = await asyncio.gather(imports.chunk([earlier]), imports.chunk([later]))

        assert (first.imported, second.imported) == (1, 0)
        assert [(r.index, r.code) for r in second.refusals] == [(0, Code.ALREADY_EXISTS)]
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert [r.event.phone for r in written] == ["+14155550100"]  # type: ignore[attr-defined]


async def test_the_same_record_twice_in_one_import_is_recorded_once():
    async with running() as (app, _):
        await app.writes.record(define())
        result = await _imports(app).chunk([opt_in(7, "+14155550100")] * 3)
        assert (result.imported, result.present) == (1, 2)


class _FailingOnce(InMemoryLedger):
    """A ledger whose first append of subscriber facts fails, as a broker gone away."""

    failed = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if not self.failed and any(isinstance(e, ConsentGranted) for e in events):
            self.failed = True
            raise LedgerUnavailable("the broker went away")
        return await super().append(events)


async def test_a_record_whose_append_failed_is_appended_when_sent_again():
    async with running(ledger=_FailingOnce(partitions=4)) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        failed = await imports.chunk([opt_in(7, "+14155550100")])
        assert (failed.imported, _not_now(failed)) == (0, [7])

        again = await imports.chunk([opt_in(7, "+14155550100")])

        assert (again.imported, again.present) == (1, 0)
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert [type(r.event).__name__ for r in written] == ["ConsentGranted"]


class _Slow(InMemoryLedger):
    """A ledger whose appends of subscriber facts take a while (the first may fail
    instead), so that two imports at once meet while one appends."""

    fail_first = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if any(isinstance(e, ConsentGranted) for e in events):
            await asyncio.sleep(0.05)
            if self.fail_first:
                self.fail_first = False
                raise LedgerUnavailable("the broker went away")
        return await super().append(events)


def _granted(written: list[Recorded]) -> list[str]:
    return sorted(r.event.request_id for r in written if isinstance(r.event, ConsentGranted))


async def test_two_imports_of_the_same_records_at_once_append_each_once():
    """Both used to find the ids claimed with their own fingerprint and the facts
    not applied, and both appended them."""
    async with running(ledger=_Slow(partitions=4)) as (app, _):
        await app.writes.record(define())
        items = [opt_in(i, f"+1415555{i:04d}") for i in range(20)]

        one, other = await asyncio.gather(_imports(app).chunk(items), _imports(app).chunk(items))

        assert sorted([(one.imported, one.present), (other.imported, other.present)]) == [
            (0, 20),
            (20, 0),
        ]
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert _granted(written) == sorted(f"imp-{i}" for i in range(20))


async def test_an_import_waiting_for_anothers_failed_append_appends_the_records_itself():
    ledger = _Slow(partitions=4)
    ledger.fail_first = True
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        items = [opt_in(i, f"+1415555{i:04d}") for i in range(5)]

        # Told of the failure, it takes the turns at once, not when they run out.
        failed, waited = sorted(
            await asyncio.wait_for(
                asyncio.gather(_imports(app).chunk(items), _imports(app).chunk(items)), 5
            ),
            key=lambda result: result.imported,
        )

        assert (failed.imported, _not_now(failed)) == (0, [0, 1, 2, 3, 4])
        assert (waited.imported, waited.present, waited.refusals) == (5, 0, [])
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert _granted(written) == sorted(f"imp-{i}" for i in range(5))


async def test_records_whose_turn_a_dead_import_took_are_written_once_it_runs_out():
    async with running() as (app, _):
        await app.writes.record(define())
        items = [opt_in(i, f"+1415555{i:04d}") for i in range(3)]
        # A dead import: its turns taken, nothing appended.
        dead = [(BRAND, f"imp-{i}") for i in range(3)]
        await app.writes.ctx.view.take_append_turns(dead, "a dead import", 0.3)

        again = await _imports(app).chunk(items)

        assert (again.imported, again.present) == (3, 0)
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert _granted(written) == ["imp-0", "imp-1", "imp-2"]


async def test_an_import_waiting_for_a_turn_holds_none_another_waits_for():
    """A third import gave up a turn that two others wanted; the one that took it
    waits for a record whose turn the other took meanwhile, and the other waits
    for it: both used to wait until a turn ran out (two minutes), holding theirs."""
    async with running() as (app, _):
        await app.writes.record(define())
        view = app.writes.ctx.view
        first, second = (BRAND, "imp-1"), (BRAND, "imp-2")
        await view.take_append_turns([first], "a third import", 60)
        items = [opt_in(1, "+14155550001"), opt_in(2, "+14155550002")]
        waiting = asyncio.ensure_future(_imports(app).chunk(items))
        await asyncio.sleep(0.01)  # it asked for both turns: the first was held
        await view.end_append_turns([first], "a third import", appended=False)
        # Another import takes the first record's turn and waits for the second's.
        assert await view.take_append_turns([first], "another", 60) == [AppendTurn.TAKEN]

        async def the_other() -> None:
            while await view.take_append_turns([second], "another", 60) != [AppendTurn.TAKEN]:
                await asyncio.sleep(0.01)
            await app.writes.ctx.ledger.append(
                [e for i in items for e in await _imports(app)._checked(i, NOW)]
            )
            await view.end_append_turns([first, second], "another", appended=True)

        await asyncio.wait_for(the_other(), 5)
        result = await asyncio.wait_for(waiting, 5)

        assert (result.imported, result.present) == (0, 2)
        written = [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]
        assert _granted(written) == ["imp-1", "imp-2"]


async def test_an_import_cancelled_while_taking_turns_gives_them_back():
    """A call cancelled (Ctrl-C in the CLI) while its statement took the turns left
    them taken: the re-run waited for them to run out (two minutes)."""
    async with running() as (app, _):
        await app.writes.record(define())
        view = app.writes.ctx.view
        take, asked = view.take_append_turns, asyncio.Event()

        async def answered_late(keys, holder, lease_s):  # type: ignore[no-untyped-def]
            turns = await take(keys, holder, lease_s)  # taken: the statement committed
            asked.set()
            await asyncio.sleep(0.2)  # and its answer is still on its way
            return turns

        view.take_append_turns = answered_late  # type: ignore[method-assign]
        items = [opt_in(1, "+14155550001"), opt_in(2, "+14155550002")]
        cancelled = asyncio.ensure_future(_imports(app).chunk(items))
        await asyncio.wait_for(asked.wait(), 5)
        cancelled.cancel()
        view.take_append_turns = take  # type: ignore[method-assign]

        again = await asyncio.wait_for(_imports(app).chunk(items), 5)

        assert (again.imported, again.present) == (2, 0)


async def test_a_dry_run_checks_everything_and_writes_nothing():
    async with running() as (app, _):
        await app.writes.record(define())
        await _imports(app).chunk([opt_in(0, "+14155550100")])
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

        result = await _imports(app).chunk(
            [opt_in(0, "+14155550100"), opt_in(1, "+14155550101"), opt_in(2, "bad")],
            dry_run=True,
        )

        assert (result.imported, result.present) == (1, 1)
        assert [r.index for r in result.refusals] == [2]
        assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends
        assert await app.view.request_use(BRAND, "imp-1") is None  # nothing claimed


async def test_a_dry_run_remembers_its_records_up_to_a_bound(monkeypatch):
    """A dry run answers a later chunk's repeat as the import would, from what its
    earlier chunks would import; it holds that for at most ``REMEMBERED``
    records, so a long stream does not grow the service without end."""
    monkeypatch.setattr(imports_module, "REMEMBERED", 2)
    async with running() as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        first = await imports.chunk([opt_in(i, f"+1415555010{i}") for i in range(3)], dry_run=True)
        again = await imports.chunk([opt_in(0, "+14155550100")], dry_run=True)
        past = await imports.chunk([opt_in(2, "+14155550102")], dry_run=True)

        assert first.imported == 3
        assert (again.imported, again.present) == (0, 1)  # remembered
        assert (past.imported, past.present) == (1, 0)  # beyond the bound: not remembered
        assert len(imports._taken) == 2


async def test_a_chunk_appends_its_opt_outs_first_and_they_take_effect_by_their_times():
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"
        # The export lists the opt-in first; the opt-out happened after it. Appended
        # first, the opt-out cannot be left out of a prefix that holds the opt-in.
        result = await _imports(app).chunk([opt_in(0, phone, 10), opt_out(1, phone, 30)])
        assert result.imported == 2
        partition = app.ledger.partition_for(phone)
        events = [r.event for r in await app.ledger.read(Stream.SUBSCRIBERS, partition, 0)]
        assert [type(e) for e in events] == [ConsentRevoked, ConsentGranted]
        answer = await app.checks.can_send(phone, BRAND, "promo", token=result.token)
        assert answer.decision.reason is Reason.REVOKED


async def test_an_opt_out_of_an_unknown_campaign_is_kept_for_review():
    async with running() as (app, _):
        result = await _imports(app).chunk([opt_out(0, "+14155550100", 1, campaign="gone")])
        assert result.imported == 1
        partition = app.ledger.partition_for("+14155550100")
        (kept,) = await app.ledger.read(Stream.SUBSCRIBERS, partition, 0)
        assert isinstance(kept.event, RevocationCandidateFlagged)
        # Another platform received it: its confirmation was that platform's to send.
        assert kept.event.unattributed and kept.event.from_import


def only_globex(brand: str) -> None:
    """An import's ``authorize`` for a token that writes for globex alone."""
    if brand != "globex":
        raise PermissionDenied("brand", f"this token may not act for {brand!r}")


async def test_records_of_a_brand_the_caller_may_not_write_for_are_refused():
    async with running() as (app, _):
        await app.writes.record(define())

        imports = Imports(app.writes.ctx, authorize=only_globex)
        result = await imports.chunk([opt_in(0, "+14155550100")])

        assert result.imported == 0
        assert [(r.code, r.violations[0][0]) for r in result.refusals] == [
            (Code.PERMISSION_DENIED, "brand")
        ]


async def test_imported_facts_carry_the_importer_and_answer_can_send():
    async with running() as (app, _):
        await app.writes.record(define())
        imports = Imports(app.writes.ctx, recorded_by="migration-bot")
        result = await imports.chunk([opt_in(0, "+14155550100", minutes=-60)])
        answer = await app.checks.can_send(
            "+14155550100", BRAND, "promo", at=at(0) + timedelta(hours=2), token=result.token
        )
        assert answer.decision.reason is Reason.CONSENT_ACTIVE
        partition = app.ledger.partition_for("+14155550100")
        (granted,) = await app.ledger.read(Stream.SUBSCRIBERS, partition, 0)
        assert granted.event.recorded_by == "migration-bot"


async def test_a_chunk_larger_than_the_limit_is_refused_whole():
    async with running() as (app, _):
        with pytest.raises(InvalidRequest):
            await _imports(app).chunk([opt_in(i, "+14155550100") for i in range(MAX_CHUNK + 1)])


def no_channel(i: int, phone: str, request_id: str = "") -> Item:
    """An opt-out whose translation was refused (no channel), as the servicer gives it."""
    request_id = request_id or f"imp-{i}"
    held = HoldRefusedOptOut(request_id, phone, BRAND, f"record-{i}", "promo")
    return Item(i, None, InvalidRequest("channel", "is required"), request_id, held)


async def _written(app: App) -> list[LedgerEvent]:
    return [r.event for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]


async def test_an_opt_out_refused_for_its_details_is_held_and_denies_until_reviewed():
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"

        result = await _imports(app).chunk([opt_in(0, phone, -60), no_channel(1, phone)])

        assert (result.imported, result.held) == (1, 1)
        (refusal,) = result.refusals
        assert (refusal.index, refusal.code) == (1, Code.INVALID_ARGUMENT)
        assert refusal.violations[0] == ("channel", f"is required; {HELD_FOR_REVIEW}")
        assert refusal.held
        answer = await app.checks.can_send(phone, BRAND, "promo", token=result.token)
        assert answer.decision.reason is Reason.REVOCATION_PENDING_REVIEW
        # What is held is named: no reply of the person's reads like an opt-out.
        assert answer.decision.detail == (
            "an imported opt-out (opt-out 'imp-1' refused at import (channel: is required)) "
            "awaits review"
        )
        (held,) = [e for e in await _written(app) if isinstance(e, RevocationCandidateFlagged)]
        assert (held.phone, held.brand, held.request_id[:5]) == (phone, BRAND, "held-")

        resolved = await app.writes.record(
            ResolveRevocationCandidate(
                "review-1",
                phone,
                BRAND,
                str(held.event_id),
                CandidateResolution.DISMISSED,
                held.occurred_at,  # not before the hold: a decision follows what it decides
            )
        )
        answer = await app.checks.can_send(phone, BRAND, "promo", token=resolved.token)
        assert answer.decision.allowed


async def test_a_hold_of_an_opt_out_sent_without_a_channel_says_so_in_the_apis_terms():
    """A refused opt-out's reason is kept with its hold in the ledger, for good, and
    shown wherever the hold is (the review queue, the packet, CanSend's detail): it
    said "channel: is required (REVOCATION_CHANNEL_UNSPECIFIED given)", the proto's
    zero value, a name no client wrote."""
    from consent.v1 import consent_service_pb2 as api_pb2
    from google.protobuf.timestamp_pb2 import Timestamp

    from services.grpc_api.imports import items_from_proto

    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"
        when = Timestamp()
        when.FromDatetime(at(-5))
        stop = api_pb2.RecordOptOutRequest(
            request_id="imp-1", phone=phone, brand=BRAND, campaign="promo", occurred_at=when
        )

        result = await _imports(app).chunk(
            items_from_proto([api_pb2.ImportRecord(opt_out=stop)], 0)
        )

        reason = "is required and was not set: one of keyword, free_text, web, call, api"
        (refusal,) = result.refusals
        assert refusal.held and refusal.violations == (
            ("channel", f"{reason}; {HELD_FOR_REVIEW}"),
        )  # fmt: skip
        (held,) = [e for e in await _written(app) if isinstance(e, RevocationCandidateFlagged)]
        assert held.text == f"opt-out 'imp-1' refused at import (channel: {reason})"
        answer = await app.checks.can_send(phone, BRAND, "promo", token=result.token)
        assert answer.decision.reason is Reason.REVOCATION_PENDING_REVIEW
        assert f"(channel: {reason})" in answer.decision.detail
        assert "UNSPECIFIED" not in answer.decision.detail


async def test_an_opt_out_refused_for_a_reused_import_id_is_held():
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"
        # One id space for two source tables: the opt-in takes it, the opt-out is refused.
        reused = opt_out(0, phone, 5)

        result = await _imports(app).chunk([opt_in(0, phone), reused])

        assert (result.imported, result.held) == (1, 1)
        assert [(r.code, r.violations[0][0]) for r in result.refusals] == [
            (Code.ALREADY_EXISTS, "request_id")
        ]
        assert result.refusals[0].violations[0][1].endswith(HELD_FOR_REVIEW)
        answer = await app.checks.can_send(phone, BRAND, "promo", token=result.token)
        assert answer.decision.reason is Reason.REVOCATION_PENDING_REVIEW


async def test_a_re_run_holds_a_refused_opt_out_once():
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"
        items = [opt_in(0, phone), opt_out(0, phone, 5), no_channel(1, "+1 415 555 0101")]
        first = await _imports(app).chunk(items)
        assert first.held == 2
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

        again = await _imports(app).chunk(items)

        assert (again.imported, again.present, again.held) == (0, 1, 0)
        assert all(r.violations[0][1].endswith(HELD_FOR_REVIEW) for r in again.refusals)
        assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_refused_opt_out_whose_digits_read_two_ways_is_held_under_both_once():
    """6465550100 is (646) 555-0100 in New York and, with a "+", +64 6555 0100 in New
    Zealand: one record held under both numbers, counted once, and a re-run holds
    neither again."""
    async with running() as (app, _):
        await app.writes.record(define())
        items = [opt_in(0, "+16465550100", -60), no_channel(1, "6465550100")]

        first = await _imports(app).chunk(items)

        assert (first.imported, first.held) == (1, 1)
        answer = await app.checks.can_send("+16465550100", BRAND, "promo", token=first.token)
        assert answer.decision.reason is Reason.REVOCATION_PENDING_REVIEW, answer.decision
        held = [e for e in await _written(app) if isinstance(e, RevocationCandidateFlagged)]
        assert sorted(e.phone for e in held) == ["+16465550100", "+6465550100"]
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)
        again = await _imports(app).chunk(items)
        assert (again.imported, again.present, again.held) == (0, 1, 0)
        assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_dry_run_says_a_refused_opt_out_would_be_held_and_writes_nothing():
    async with running() as (app, _):
        await app.writes.record(define())
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

        result = await _imports(app).chunk([no_channel(0, "+14155550100")], dry_run=True)

        assert result.held == 1 and result.refusals[0].held
        assert result.refusals[0].violations[0][1].endswith(f"would be {HELD_FOR_REVIEW}")
        assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_opt_out_without_a_readable_number_or_an_opt_in_is_not_held():
    async with running() as (app, _):
        await app.writes.record(define())
        result = await _imports(app).chunk(
            [no_channel(0, "not a phone"), opt_in(1, "+14155550101", campaign="nope")]
        )
        assert (result.held, len(result.refusals)) == (0, 2)
        assert not any(HELD_FOR_REVIEW in r.violations[0][1] for r in result.refusals)
        assert not any(r.held for r in result.refusals)
        assert await _written(app) == []


async def test_an_opt_out_of_a_brand_the_caller_may_not_write_for_is_not_held():
    async with running() as (app, _):
        await app.writes.record(define())

        result = await Imports(app.writes.ctx, authorize=only_globex).chunk(
            [no_channel(0, "+14155550100")]
        )
        assert (result.held, len(result.refusals)) == (0, 1)
        assert await _written(app) == []


@pytest.mark.parametrize(
    ("own", "held_under"),
    [(("acme",), ["acme"]), (("acme", "initech"), ["acme", "initech"]), (("*",), ["*"])],
)
@pytest.mark.parametrize("brand", ["", "   ", "N/A", "*"])
async def test_an_opt_out_naming_no_readable_brand_is_held_under_each_of_the_callers(
    brand, own, held_under
):
    """It was refused on brand and held under none, so CanSend went on allowing the
    number; it was one of the caller's brands, so each of them is denied."""
    async with running() as (app, _):
        await app.writes.record(define())
        item = no_channel(0, "+14155550100")
        assert item.held is not None
        item = Item(0, None, InvalidRequest("brand", "is required"), "imp-0",
                    replace(item.held, brand=brand))  # fmt: skip

        result = await Imports(app.writes.ctx, own_brands=lambda: own).chunk([item])

        assert result.held == 1 and result.refusals[0].held
        assert result.refusals[0].violations[0][0] == "brand"
        held = await _written(app)
        assert sorted(e.brand for e in held) == held_under  # type: ignore[attr-defined]
        assert all(isinstance(e, RevocationCandidateFlagged) for e in held)


@pytest.mark.parametrize("own", [("acme",), ("acme", "initech"), ("*",)])
@pytest.mark.parametrize("brand", ["ac\x00me", "acme\n", "acm\ufffe\x7fe", "ac\n*me", "Acme!"])
async def test_an_opt_out_whose_brand_reads_as_one_in_use_is_held_under_it(brand, own):
    """Held under the caller's brands, or "*", it denied brands the person never
    asked to stop (every brand, for a token of every brand)."""
    async with running() as (app, _):
        await app.writes.record(define())
        item = no_channel(0, "+14155550100")
        assert item.held is not None
        item = Item(0, None, InvalidRequest("brand", "is no name"), "imp-0",
                    replace(item.held, brand=brand))  # fmt: skip

        result = await Imports(app.writes.ctx, own_brands=lambda: own).chunk([item])

        assert result.held == 1 and result.refusals[0].held
        assert [e.brand for e in await _written(app)] == ["acme"]  # type: ignore[attr-defined]
        # A caller that does not write for the brand it means holds nothing.
        other = Imports(app.writes.ctx, authorize=only_globex, own_brands=lambda: ("globex",))
        result = await other.chunk([replace(item, request_id="imp-1")])
        assert result.held == 0 and not result.refusals[0].held


def only_acme(brand: str) -> None:
    """An import's ``authorize`` for a token that writes for acme alone."""
    if brand != "acme":
        raise PermissionDenied("brand", f"this token may not act for {brand!r}")


@pytest.mark.parametrize("authorize", [lambda brand: None, only_acme], ids=["every", "acme"])
@pytest.mark.parametrize("brand", ["ac-me", "a.cme", "ACME", "acme_", "Acme"])
async def test_an_opt_out_whose_brand_differs_from_one_in_use_by_separators_is_held_under_it(
    brand, authorize
):
    """Before: "ac-me" and "a.cme", valid names, were imported as a ConsentRevoked
    under "ac-me" by a token of every brand, which stopped nothing acme sends, and
    refused PERMISSION_DENIED with nothing held for a token of acme alone."""
    async with running() as (app, _):
        await app.writes.record(define())
        stop = RecordOptOut(
            "imp-x", "+14155550100", brand, None, RevocationChannel.KEYWORD, at(1), "STOP"
        )

        result = await Imports(app.writes.ctx, authorize=authorize).chunk(
            [Item(0, stop, None, "imp-x")]
        )

        assert (result.imported, result.held) == (0, 1)
        (refusal,) = result.refusals
        assert (refusal.code, refusal.violations[0][0], refusal.held) == (
            Code.INVALID_ARGUMENT, "brand", True,
        )  # fmt: skip
        written = await _written(app)
        assert [type(e) for e in written] == [RevocationCandidateFlagged]
        assert [e.brand for e in written] == ["acme"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("brand", ["ac-me", "a.cme"])
async def test_a_brand_that_means_only_another_callers_is_refused_as_not_the_callers(brand):
    async with running() as (app, _):
        await app.writes.record(define())
        stop = RecordOptOut(
            "imp-x", "+14155550100", brand, None, RevocationChannel.KEYWORD, at(1), "STOP"
        )

        result = await Imports(app.writes.ctx, authorize=only_globex).chunk(
            [Item(0, stop, None, "imp-x")]
        )

        assert (result.imported, result.held) == (0, 0)
        assert [r.code for r in result.refusals] == [Code.PERMISSION_DENIED]
        assert await _written(app) == []


async def test_an_opt_out_naming_no_readable_brand_is_not_held_when_told_no_brands():
    async with running() as (app, _):
        await app.writes.record(define())
        item = no_channel(0, "+14155550100")
        assert item.held is not None
        item = Item(0, None, InvalidRequest("brand", "is required"), "imp-0",
                    replace(item.held, brand=""))  # fmt: skip

        result = await _imports(app).chunk([item])

        assert result.held == 0 and await _written(app) == []


async def test_a_hold_whose_append_failed_is_not_written_and_is_held_when_sent_again():
    async with running(ledger=_FailingOnce(partitions=4)) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        items = [opt_in(0, "+14155550100"), no_channel(1, "+14155550100")]
        failed = await imports.chunk(items)
        assert (failed.imported, failed.held, _not_now(failed)) == (0, 0, [0, 1])
        assert await _written(app) == []

        again = await imports.chunk(items)

        assert (again.imported, again.held) == (1, 1)
        assert sorted(type(e).__name__ for e in await _written(app)) == [
            "ConsentGranted",
            "RevocationCandidateFlagged",
        ]


def _not_now(result: ChunkResult) -> list[int]:
    """The records ``result`` says were not imported for now, to be sent again."""
    return [r.index for r in result.refusals if r.code == Code.UNAVAILABLE]


def _imports(app: App, retry_s: float = 0.0) -> Imports:
    """An import on ``app``: the failures the tests inject outlast its retries unless
    a test gives it time to retry (``retry_s``)."""
    return Imports(app.writes.ctx, retry_s=retry_s)


async def test_an_import_prunes_the_turns_that_ended_long_ago_as_it_begins(monkeypatch):
    """Every record imported leaves its turn to append behind; they were never
    deleted. An import now forgets, as it begins, those ended ``TURNS_KEPT_S`` ago."""
    async with running() as (app, _):
        await app.writes.record(define())
        view = app.writes.ctx.view
        old, recent = (BRAND, "earlier-1"), (BRAND, "earlier-2")
        await view.take_append_turns([old], "an earlier import", 60)
        await view.end_append_turns([old], "an earlier import", appended=True)
        await asyncio.sleep(1.0)
        await view.take_append_turns([recent], "an earlier import", 60)
        await view.end_append_turns([recent], "an earlier import", appended=True)
        monkeypatch.setattr(imports_module, "TURNS_KEPT_S", 0.5)

        imported = await _imports(app).chunk([opt_in(0, "+14155550100")])

        assert imported.imported == 1
        assert await view.take_append_turns([old, recent], "another", 60) == [
            AppendTurn.TAKEN,  # forgotten
            AppendTurn.APPENDED,
        ]


async def test_two_imports_in_a_row_prune_the_old_turns_once(monkeypatch):
    """Each import pruned the old append turns as it began (1c2b663): a look at every
    turn of the last day, some 0.45 s a million on PostgreSQL, which a client making
    many small ImportConsents calls paid on each. A process prunes once an interval
    now (``CONSENT_IMPORT_PRUNE_INTERVAL_S``), whichever import begins first."""
    async with running() as (app, _):
        await app.writes.record(define())
        pruned: list[float] = []
        prune = app.view.prune_append_turns

        async def counted(kept_s: float) -> int:
            pruned.append(kept_s)
            return await prune(kept_s)

        monkeypatch.setattr(app.view, "prune_append_turns", counted)
        usecases = UseCases.build(app.ledger, app.view, app.guard, import_prune_interval=3600)

        for i in range(2):
            result = await usecases.start_import().chunk([opt_in(10 + i, f"+1415555010{i}")])
            assert result.imported == 1

        assert pruned == [imports_module.TURNS_KEPT_S]

        # Past the interval, the next import prunes again; 0 prunes at every import.
        now = [0.0]
        pruning = TurnPruning(60, clock=lambda: now[0])
        for i, moved in enumerate((0.0, 59.0, 61.0)):
            now[0] = moved
            imports = Imports(app.writes.ctx, pruning=pruning)
            assert (await imports.chunk([opt_in(20 + i, f"+1415555011{i}")])).imported == 1
        assert len(pruned) == 3  # at 0 and at 61, not at 59
        every = TurnPruning(0)
        for i in range(2):
            await Imports(app.writes.ctx, pruning=every).chunk([opt_in(30 + i, f"+1415555012{i}")])
        assert len(pruned) == 5


class _Torn(InMemoryLedger):
    """A ledger whose first append of subscriber facts records only its first
    ``kept`` events, then fails: a Kafka append is not atomic, and a process killed
    between two batches, or a batch given up on, leaves such a prefix."""

    def __init__(self, kept: int) -> None:
        super().__init__(partitions=4)
        self.kept, self.torn = kept, False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if self.torn or not any(isinstance(e, ConsentGranted) for e in events):
            return await super().append(events)
        self.torn = True
        await super().append(events[: self.kept])
        raise LedgerUnavailable("the broker went away after the first batch")


@pytest.mark.parametrize("kept", [1, 2, 3])
async def test_a_chunk_cut_short_in_the_ledger_never_allows_a_number_it_opts_out(kept):
    # In the order of their own times, a number's opt-in went before its opt-out: the
    # opt-in recorded alone allowed the number while the import was run again.
    phone, other = "+14155550100", "+14155550101"
    async with running(ledger=_Torn(kept)) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        items = [opt_in(0, phone, 0), opt_in(1, other, 1), opt_out(2, phone, 2)]
        failed = await imports.chunk(items)
        assert _not_now(failed) == [0, 1, 2]
        written = await app.ledger.end_offsets(Stream.SUBSCRIBERS)
        check = await app.checks.can_send(phone, BRAND, "promo")
        assert sum(written.values()) == kept
        assert not check.decision.allowed, check.decision


@pytest.mark.parametrize("refused", ["no channel", "reused id"])
async def test_a_held_opt_out_denies_from_its_own_time_in_an_audit_of_the_moments_before(refused):
    """An opt-out refused for its details and held was placed at the import, not at
    its own time: an audit of a send between the two (CanSendAsOf, with the ledger
    as it stands) read "allowed" for a number known to have opted out by then. It is
    placed at its own time now, or at the import when that time lies ahead of it."""
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        phone = "+14155550100"
        if refused == "no channel":
            held = HoldRefusedOptOut("imp-1", phone, BRAND, "record-1", "promo", occurred_at=at(10))
            stop = Item(1, None, InvalidRequest("channel", "is required"), "imp-1", held)
        else:  # the opt-in took the import id first
            stop = opt_out(0, phone, 10)
        ahead = HoldRefusedOptOut("imp-2", "+14155550101", BRAND, "record-2", occurred_at=at(600))
        later = Item(2, None, InvalidRequest("channel", "is required"), "imp-2", ahead)

        result = await _imports(app).chunk([opt_in(0, phone, -120), stop, later])

        assert result.held == 2
        flagged = {
            e.phone: e.occurred_at
            for e in await _written(app)
            if isinstance(e, RevocationCandidateFlagged)
        }
        assert flagged == {phone: at(10), "+14155550101": NOW}
        asked = {"reader": AUDITOR, "token": result.token}
        # Known now: the import came after at(5), and without known_at what was recorded
        # after a moment counts against it, never for it.
        before = await app.checks.can_send_as_of(phone, BRAND, "promo", at(5), NOW, **asked)
        between = await app.checks.can_send_as_of(phone, BRAND, "promo", at(30), **asked)
        assert before.decision.allowed
        assert between.decision.reason is Reason.REVOCATION_PENDING_REVIEW


class _Logged(InMemoryLedger):
    """Appends that take a moment, as over a network, kept in the order they land."""

    def __init__(self) -> None:
        super().__init__(partitions=4)
        self.landed: list[LedgerEvent] = []

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        await asyncio.sleep(0.01)
        self.landed += events
        return await super().append(events)


@pytest.mark.parametrize("seed", range(5))
async def test_chunks_at_once_append_no_opt_in_before_an_opt_out_of_its_number(seed):
    """Each chunk put its opt-outs first, but the chunks of one import worked on at
    once appended in any order: a number's opt-in in one message landed before its
    later opt-out in the next, and CanSend allowed the number in between."""
    import random

    ledger = _Logged()
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        items: list[Item] = []
        for n in range(12):
            phone = f"+141555501{n:02d}"
            # The opt-out after the opt-in, before it, or at the same instant.
            offset = (5, -5, 0)[n % 3]
            items += [opt_in(2 * n, phone, 10), opt_out(2 * n + 1, phone, 10 + offset, None)]
        random.Random(seed).shuffle(items)
        imports = _imports(app)

        results = await asyncio.gather(*(imports.chunk(items[i : i + 3]) for i in range(0, 24, 3)))

        assert sum(r.imported for r in results) == 24
        seen_out: set[str] = set()
        for event in ledger.landed:
            if isinstance(event, ConsentRevoked):
                seen_out.add(event.phone)
            elif isinstance(event, ConsentGranted):
                assert event.phone in seen_out, f"{event.phone}: opt-in before its opt-out"
        assert seen_out == _opted_out(items)
        for n in range(12):
            check = await app.checks.can_send(f"+141555501{n:02d}", BRAND, "promo")
            assert check.decision.allowed == (n % 3 == 1), (n, check.decision)


def _opted_out(items: Sequence[Item]) -> set[str]:
    return {i.command.phone for i in items if isinstance(i.command, RecordOptOut)}


class _RefusingOptOuts(_Logged):
    """Appends of opt-outs fail, as a broker gone away for them."""

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if any(isinstance(e, ConsentRevoked) for e in events):
            await asyncio.sleep(0.01)
            raise LedgerUnavailable("the broker went away")
        return await super().append(events)


async def test_an_opt_out_whose_append_failed_holds_back_only_its_numbers_opt_ins():
    """A message whose opt-outs failed to append (past the retries) failed every
    message whose opt-ins waited for them, and ended the import. Now each says which
    records were not imported and why: the opt-outs, and the opt-ins of their numbers
    in this import, then or later (fail closed); the rest are imported."""
    ledger = _RefusingOptOuts()
    phone, other, third = "+14155550100", "+14155550101", "+14155550102"
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)

        opted_in, opted_out = await asyncio.gather(
            imports.chunk([opt_in(0, phone, 0), opt_in(1, other, 1)]),
            imports.chunk([opt_out(2, phone, 5, None)]),
        )
        later = await imports.chunk([opt_in(3, "+1 415 555 0100", 6), opt_in(4, third, 6)])

        assert (opted_out.imported, _not_now(opted_out)) == (0, [2])
        assert (opted_in.imported, _not_now(opted_in)) == (1, [0])
        assert (later.imported, _not_now(later)) == (1, [3])
        for result in (opted_in, later):
            (field_name, reason), *_ = result.refusals[0].violations
            assert field_name == "record"
            assert "opt-outs of the message with record 2" in reason, reason
            assert "the broker went away" in reason and "send it again" in reason
        granted = {e.phone for e in ledger.landed if isinstance(e, ConsentGranted)}
        assert granted == {other, third}
        assert not (await app.checks.can_send(phone, BRAND, "promo")).decision.allowed
        again = await _imports(app).chunk([opt_in(0, phone, 0)])
        assert again.imported == 1  # its turn and claim given back: sent again, written


class _OptOutsFailingOnce(_Logged):
    """The first append of opt-outs fails, as a broker slow to acknowledge under load."""

    failed = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if not self.failed and any(isinstance(e, ConsentRevoked) for e in events):
            self.failed = True
            await asyncio.sleep(0.01)
            raise LedgerUnavailable("Kafka ledger: 1 event(s) not acknowledged")
        return await super().append(events)


async def test_a_statement_or_an_append_failing_for_a_moment_is_tried_again():
    """On a loaded machine one PostgreSQL statement over its bound (1.5 s), or an
    append not acknowledged in time, failed its whole message, and with it the other
    messages whose opt-ins waited for its opt-outs: the import ended, to be run again.
    Each is tried again; the opt-ins still go only after the opt-outs."""
    ledger = _OptOutsFailingOnce()
    phone, other = "+14155550100", "+14155550101"
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        imports = _imports(app, retry_s=imports_module.RETRY_S)
        claim, failed = app.view.claim_requests, []

        async def over_its_bound(claims):  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(claims)
                raise StoreUnavailable("PostgreSQL did not answer within 1.5 s")
            return await claim(claims)

        app.view.claim_requests = over_its_bound  # type: ignore[method-assign]

        opted_in, opted_out = await asyncio.gather(
            imports.chunk([opt_in(0, phone, 0), opt_in(1, other, 1)]),
            imports.chunk([opt_out(2, phone, 5, None)]),
        )

        assert failed and ledger.failed
        assert (opted_in.imported, opted_out.imported) == (2, 1)
        assert opted_in.refusals == opted_out.refusals == []
        landed = [type(e).__name__ for e in ledger.landed if getattr(e, "phone", "") == phone]
        assert landed == ["ConsentRevoked", "ConsentGranted"]
        assert not (await app.checks.can_send(phone, BRAND, "promo")).decision.allowed
        assert (await app.checks.can_send(other, BRAND, "promo")).decision.allowed


class _OptOutsLandingLate(_Logged):
    """The first append of opt-outs is stored, but answered as not acknowledged in
    time: a broker that acknowledged after the append stopped waiting."""

    late = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        recorded = await super().append(events)
        if not self.late and any(isinstance(e, ConsentRevoked) for e in events):
            self.late = True
            raise LedgerUnavailable("Kafka ledger: 1 event(s) not acknowledged")
        return recorded


async def test_an_append_acknowledged_late_is_not_appended_again():
    """Its retry appended the same events again (Kafka held them twice): it now finds
    them in the view first, once it has applied the ledger's end."""
    ledger = _OptOutsLandingLate()
    phone = "+14155550100"
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        imports = _imports(app, retry_s=imports_module.RETRY_S)

        result = await imports.chunk([opt_out(0, phone, 5, None), opt_out(1, phone, 6, "promo")])

        assert ledger.late
        assert (result.imported, result.refusals) == (2, [])
        landed = [type(e).__name__ for e in ledger.landed if getattr(e, "phone", "") == phone]
        assert landed == ["ConsentRevoked"] * 2


async def test_an_append_acknowledged_late_is_answered_unavailable_while_the_view_lags():
    """What the first try stored cannot be told: appended again blind, it could be
    stored twice, so its records are refused ``UNAVAILABLE`` (send them again)."""
    ledger = _OptOutsLandingLate()
    phone = "+14155550100"
    async with running(ledger=ledger, wait_bound=0.05) as (app, projector):
        await app.writes.record(define())
        await stop_task(projector)
        imports = _imports(app, retry_s=0.5)

        result = await imports.chunk([opt_out(0, phone, 5, None)])

        assert ledger.late
        assert result.imported == 0
        assert [r.code for r in result.refusals] == [Code.UNAVAILABLE]
        landed = [type(e).__name__ for e in ledger.landed if getattr(e, "phone", "") == phone]
        assert landed == ["ConsentRevoked"]


async def test_two_imports_of_the_same_shuffled_records_append_each_once_in_order():
    """A chunk waiting for the opt-outs of the others holds no turn to append, so two
    imports of one export at once, each waiting for its own chunks, never wait for
    each other's turns in a ring; each record is appended once, opt-out first."""
    import random

    ledger = _Logged()
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        items: list[Item] = []
        for n in range(12):
            phone = f"+141555502{n:02d}"
            items += [opt_in(2 * n, phone, 10), opt_out(2 * n + 1, phone, 15, None)]
        random.Random(7).shuffle(items)

        async def one_import(imports: Imports) -> list[Any]:
            chunks = [imports.chunk(items[i : i + 3]) for i in range(0, len(items), 3)]
            return await asyncio.gather(*chunks)

        both = await asyncio.wait_for(
            asyncio.gather(one_import(_imports(app)), one_import(_imports(app))), 30
        )

        assert sum(r.imported for results in both for r in results) == len(items)
        assert sum(r.present for results in both for r in results) == len(items)
        seen_out: set[str] = set()
        landed = [e for e in ledger.landed if isinstance(e, ConsentGranted | ConsentRevoked)]
        assert len(landed) == len(items)
        for event in landed:
            if isinstance(event, ConsentRevoked):
                seen_out.add(event.phone)
            else:
                assert event.phone in seen_out, f"{event.phone}: opt-in before its opt-out"


async def test_opt_ins_of_other_numbers_wait_for_no_opt_out_of_another_chunk():
    """A chunk's opt-ins wait only for the opt-outs of their own numbers in the other
    chunks worked on at once: an export mixing both in every message keeps appending
    its messages side by side, and a failed opt-out of one number holds up no other's."""
    ledger = _RefusingOptOuts()
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)

        opted_in, opted_out = await asyncio.gather(
            imports.chunk([opt_in(0, "+14155550101", 0), opt_in(1, "+1 415 555 0102", 1)]),
            imports.chunk([opt_out(2, "+14155550100", 5, None)]),
        )

        assert _not_now(opted_out) == [2]
        assert (opted_in.imported, opted_in.refusals) == (2, [])
        granted = {e.phone for e in ledger.landed if isinstance(e, ConsentGranted)}
        assert granted == {"+14155550101", "+14155550102"}


async def test_an_opt_out_spelled_otherwise_is_waited_for_by_its_numbers_opt_in():
    ledger = _RefusingOptOuts()
    async with running(ledger=ledger) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)

        opted_in, opted_out = await asyncio.gather(
            imports.chunk([opt_in(0, "+14155550100", 0)]),
            imports.chunk([opt_out(1, "+1 (415) 555-0100", 5, None)]),
        )

        assert _not_now(opted_out) == [1]
        assert _not_now(opted_in) == [0]
        assert not any(isinstance(e, ConsentGranted) for e in ledger.landed)


def _ticking(ctx: Any, base: list[datetime]) -> Any:
    """``ctx`` whose clock reads ``base[0]`` and moves on a microsecond each time."""
    reads = iter(range(10**9))
    return replace(ctx, clock=lambda: base[0] + timedelta(microseconds=next(reads)))


async def test_an_opt_in_stated_before_an_opt_out_stamped_ahead_in_its_chunk_does_not_outrank_it():
    """An opt-out stamped 40 s ahead and an opt-in stated 20 s ahead in one chunk both
    take their place when checked. Each read the clock: the opt-in, checked a moment
    after, was placed after the opt-out and allowed, though by their own times the
    opt-out came later. The chunk's records now share one time, at which the opt-out
    wins; both are recorded, and the number is denied."""
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550061"
        stop = RecordOptOut(
            "imp-1", phone, BRAND, "promo", RevocationChannel.KEYWORD, NOW + timedelta(seconds=40)
        )
        between = NOW + timedelta(seconds=20)
        form = an_opt_in(between, request_id="imp-2", phone=phone, proof=proof(between))
        items = [Item(1, stop, request_id="imp-1"), Item(2, form, request_id="imp-2")]
        result = await Imports(_ticking(app.writes.ctx, [NOW])).chunk(items)
        assert (result.imported, result.refusals) == (2, [])
        answer = await app.checks.can_send(phone, BRAND, "promo", token=result.token)
        assert answer.decision.reason is Reason.REVOKED


async def test_an_opt_in_stated_before_an_opt_out_stamped_ahead_in_an_earlier_chunk_is_refused():
    """The same opt-out in one message of an import and, 25 s later, the opt-in in the
    next: no longer ahead, it took its place at its own time, after the opt-out, and
    allowed. It is refused on occurred_at, not recorded."""
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550062"
        stop = RecordOptOut(
            "imp-1", phone, BRAND, "promo", RevocationChannel.KEYWORD, NOW + timedelta(seconds=40)
        )
        between = NOW + timedelta(seconds=20)
        form = an_opt_in(between, request_id="imp-2", phone=phone, proof=proof(between))
        clock = [NOW]
        imports = Imports(_ticking(app.writes.ctx, clock))
        first = await imports.chunk([Item(1, stop, request_id="imp-1")])
        clock[0] = NOW + timedelta(seconds=25)
        second = await imports.chunk([Item(2, form, request_id="imp-2")])
        assert (first.imported, second.imported) == (1, 0)
        (refusal,) = second.refusals
        assert [f for f, _ in refusal.violations] == ["occurred_at"]
        answer = await app.checks.can_send(phone, BRAND, "promo", token=first.token)
        assert answer.decision.reason is Reason.REVOKED


class _RefusingOneOptOut(_Logged):
    """Appends of the opt-out ``imp-1`` fail, as a broker gone away for them."""

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if any(isinstance(e, ConsentRevoked) and e.request_id == "imp-1" for e in events):
            raise LedgerUnavailable("the broker went away")
        return await super().append(events)


@pytest.mark.parametrize("same_message", [False, True])
async def test_another_opt_out_of_its_number_does_not_let_an_opt_in_overtake_a_failed_one(
    same_message,
):
    """An opt-out that failed to append held back its number's opt-ins until any
    opt-out of that number was appended (in their own message or an earlier one),
    however old: an opt-in then overtook the opt-out that failed, which denies it,
    and CanSend allowed the number. Only the failed opt-out itself, sent again and
    appended, lets them go."""
    phone = "+14155550100"
    async with running(ledger=_RefusingOneOptOut()) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        failed = await imports.chunk([opt_out(1, phone, 5, None)])
        assert _not_now(failed) == [1]

        older, opted_in = opt_out(2, "+1 415 555 0100", -10, None), opt_in(3, phone, 1)
        if same_message:
            later = await imports.chunk([older, opted_in])
        else:
            await imports.chunk([older])
            later = await imports.chunk([opted_in])

        assert _not_now(later) == [3]
        assert not (await app.checks.can_send(phone, BRAND, "promo")).decision.allowed


class _RefusingFirstHold(_Logged):
    """The first append of a hold fails, as a broker gone away for it."""

    failed = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if not self.failed and any(isinstance(e, RevocationCandidateFlagged) for e in events):
            self.failed = True
            raise LedgerUnavailable("the broker went away")
        return await super().append(events)


async def test_another_hold_of_its_number_does_not_let_an_opt_in_overtake_a_failed_one():
    """As for an opt-out: a hold that failed to append (an opt-out refused for its
    details, misspelt) held back its number's opt-ins until another record's hold of
    the number was appended, which then let them through."""
    phone = "+14155550100"
    async with running(ledger=_RefusingFirstHold()) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        failed = await imports.chunk([no_channel(1, "+1 415-555-0100")])
        assert _not_now(failed) == [1]
        other = await imports.chunk([no_channel(2, phone)])
        assert other.held == 1

        later = await imports.chunk([opt_in(3, phone, 1)])

        assert _not_now(later) == [3]


class _OptOutRecordedUnacknowledged(_Logged):
    """The first append of opt-outs records them, then fails: the broker took them
    and went away before it acknowledged them (``OUTCOME_UNKNOWN``)."""

    failed = False

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        recorded = await super().append(events)
        if not self.failed and any(isinstance(e, ConsentRevoked) for e in events):
            self.failed = True
            raise LedgerUnavailable("Kafka ledger: 1 event(s) not acknowledged")
        return recorded


async def test_an_opt_out_recorded_before_its_append_failed_found_present_lets_opt_ins_go():
    """An opt-out whose append failed holds back its number's opt-ins until it is sent
    again. When the failed append had recorded it after all, sending it again found
    it present, as the refusal says it may, but only an opt-out appended then let the
    opt-ins go: the opt-ins of its number stayed refused UNAVAILABLE for the rest of
    the import, however often the opt-out was sent again."""
    phone = "+14155550100"
    async with running(ledger=_OptOutRecordedUnacknowledged()) as (app, _):
        await app.writes.record(define())
        imports = _imports(app)
        failed = await imports.chunk([opt_out(1, phone, 5, None)])
        assert _not_now(failed) == [1]
        assert await app.guard.wait_for_token(ConsistencyToken.after(await _recorded(app)))

        again = await imports.chunk([opt_out(1, phone, 5, None)])
        later = await imports.chunk([opt_in(2, phone, 10)])

        assert (again.imported, again.present, again.refusals) == (0, 1, [])
        assert (later.imported, later.refusals) == (1, [])
        check = await app.checks.can_send(phone, BRAND, "promo", token=later.token)
        assert check.decision.allowed  # the opt-in came after the opt-out


async def _recorded(app: App) -> list[Recorded]:
    return [r for p in range(4) for r in await app.ledger.read(Stream.SUBSCRIBERS, p, 0)]


def _stamped_ahead_then_stated_before(phone: str) -> tuple[Item, Item]:
    """An opt-out stamped 40 s ahead, and an opt-in of its number stated 20 s ahead."""
    stop = RecordOptOut(
        "imp-1", phone, BRAND, "promo", RevocationChannel.KEYWORD, NOW + timedelta(seconds=40)
    )
    between = NOW + timedelta(seconds=20)
    form = an_opt_in(between, request_id="imp-2", phone=phone, proof=proof(between))
    return Item(1, stop, request_id="imp-1"), Item(2, form, request_id="imp-2")


async def test_an_opt_in_of_a_later_message_is_placed_after_an_earlier_messages_opt_out():
    """Each chunk read its time once it had waited for the view (the first chunks of
    an import wait together): the opt-in of the second message could read it before
    the opt-out stamped ahead of the first, take its place first, and be imported,
    or be refused on occurred_at, as the race fell; a dry run of the same stream
    fell either way too. A chunk's time now follows the order the messages came."""
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550063"
        stop, form = _stamped_ahead_then_stated_before(phone)
        imports = Imports(_ticking(app.writes.ctx, [NOW]))
        catch_up, waits = imports._catch_up, iter([0.05, 0.0])

        async def first_slowest() -> None:
            await asyncio.sleep(next(waits))
            await catch_up()

        imports._catch_up = first_slowest  # type: ignore[method-assign]
        first, second = await asyncio.gather(imports.chunk([stop]), imports.chunk([form]))

        assert (first.imported, second.imported) == (1, 0)
        assert [f for r in second.refusals for f, _ in r.violations] == ["occurred_at"]
        answer = await app.checks.can_send(phone, BRAND, "promo", token=first.token)
        assert answer.decision.reason is Reason.REVOKED


async def test_an_opt_in_is_checked_once_an_earlier_messages_opt_outs_are():
    """An opt-out stamped ahead is noted for the opt-ins after it as its chunk checks
    it: a chunk checking its opt-ins while an earlier message's were still being
    checked missed it, and imported an opt-in stated before it, which a dry run, or
    the same import at another pace, refused."""
    async with running() as (app, _):
        await app.writes.record(define())
        phone = "+14155550064"
        stop, form = _stamped_ahead_then_stated_before(phone)
        imports = Imports(_ticking(app.writes.ctx, [NOW]))
        checked = imports._checked

        async def opt_outs_slowly(item: Item, now: datetime) -> list[LedgerEvent]:
            if isinstance(item.command, RecordOptOut):
                await asyncio.sleep(0.05)
            return await checked(item, now)

        imports._checked = opt_outs_slowly  # type: ignore[method-assign]
        first, second = await asyncio.gather(imports.chunk([stop]), imports.chunk([form]))

        assert (first.imported, second.imported) == (1, 0)
        assert [f for r in second.refusals for f, _ in r.violations] == ["occurred_at"]


async def test_an_import_takes_its_turns_for_the_lease_it_was_built_with(monkeypatch):
    """``CONSENT_IMPORT_APPEND_LEASE_S`` reaches every turn an import takes: how long
    a dead import's records wait for the next import of them."""
    async with running() as (app, _):
        await app.writes.record(define())
        leases: list[float] = []
        take = app.view.take_append_turns

        async def noted(keys, holder, lease_s):  # type: ignore[no-untyped-def]
            leases.append(lease_s)
            return await take(keys, holder, lease_s)

        monkeypatch.setattr(app.view, "take_append_turns", noted)
        usecases = UseCases.build(app.ledger, app.view, app.guard, import_append_lease=7)
        assert (await usecases.start_import().chunk([opt_in(40, "+14155550130")])).imported == 1
        by_default = UseCases.build(app.ledger, app.view, app.guard)
        assert (await by_default.start_import().chunk([opt_in(41, "+14155550131")])).imported == 1
        assert leases == [7, imports_module.APPEND_LEASE_S]
