"""``ImportConsents``' stream (``services.grpc_api.imports``): one answer per message,
in the order sent, however the chunks worked on at once finish; the first message's
``dry_run`` for all; records that cannot be translated refused on their own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from types import SimpleNamespace

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken, Stream
from services.errors import RateLimited
from services.grpc_api import imports as stream
from services.usecases.imports import ChunkResult, Item, Refusal
from tests.builders import T0
from tests.e2e.harness import opt_in


class SlowFirst:
    """Chunks that finish in reverse order: the first takes longest."""

    lease_s = 120.0
    ctx = SimpleNamespace(clock=lambda: T0)  # the service's time, read per message

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []
        self.at_once = 0
        self.most_at_once = 0

    async def chunk(self, items: Sequence[Item], *, dry_run: bool = False) -> ChunkResult:
        first = items[0].index
        self.seen.append((first, dry_run))
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await asyncio.sleep(0.05 if first == 0 else 0.001)
        self.at_once -= 1
        token = ConsistencyToken({(Stream.SUBSCRIBERS, 0): first + len(items)})
        refusals = [Refusal(first, "r", "INVALID_ARGUMENT", (("phone", "bad"),), held=first == 3)]
        return ChunkResult(imported=len(items) - 1, refusals=refusals, token=token)


async def messages(count: int, size: int) -> AsyncIterator[api.ImportConsentsRequest]:
    for m in range(count):
        records = [
            api.ImportRecord(opt_in=opt_in("+14155550100", "acme", "promo", T0, f"r-{m}-{i}"))
            for i in range(size)
        ]
        yield api.ImportConsentsRequest(records=records, dry_run=m == 0)


@pytest.mark.asyncio(loop_scope="session")
async def test_answers_come_in_the_order_sent_whichever_chunk_finishes_first():
    imports = SlowFirst()

    answers = [a async for a in stream.answer_chunks(imports, messages(6, 3))]  # type: ignore[arg-type]

    assert [a.first_index for a in answers] == [0, 3, 6, 9, 12, 15]
    assert [a.imported for a in answers] == [2] * 6
    assert [(r.index, r.violations[0].field) for r in answers[1].refusals] == [(3, "phone")]
    assert [r.held_for_review for a in answers for r in a.refusals] == [False, True, *[False] * 4]
    assert answers[-1].consistency_token == "subscribers:0:18"
    assert 1 < imports.most_at_once <= stream.IN_FLIGHT
    assert {dry for _, dry in imports.seen} == {True}  # the first message's choice


def test_a_record_that_cannot_be_translated_is_refused_on_its_own():
    good = api.ImportRecord(opt_in=opt_in("+14155550100", "acme", "promo", T0, "ok"))
    no_time = api.ImportRecord(opt_in=opt_in("+14155550100", "acme", "promo", T0, "no-time"))
    no_time.opt_in.ClearField("occurred_at")

    items = stream.items_from_proto([good, api.ImportRecord(), no_time], 10)

    assert [i.index for i in items] == [10, 11, 12]
    assert items[0].command is not None and items[0].request_id == "ok"
    assert items[1].command is None and items[1].error is not None
    assert items[1].error.field == "record"
    assert items[2].command is None and items[2].error is not None
    assert items[2].request_id == "no-time"
    assert "occurred_at" in {f for f, _ in items[2].error.violations}


def test_a_record_refused_for_an_unset_field_names_its_time_ahead_too():
    """A record with its tier unset and its time days ahead was refused naming only
    the tier: its time was refused once it came back fixed, an import run again."""
    ahead = opt_in("+14155550100", "acme", "promo", T0 + timedelta(days=3), "both", tier=0)

    (item,) = stream.items_from_proto([api.ImportRecord(opt_in=ahead)], 0, T0)

    assert item.command is None and item.error is not None
    assert {"tier", "occurred_at"} <= {f for f, _ in item.error.violations}


def test_an_answer_names_every_bad_field_of_each_refused_record():
    result = ChunkResult(
        imported=1,
        present=2,
        refusals=[Refusal(7, "r-7", "INVALID_ARGUMENT", (("phone", "bad"), ("brand", "bad")))],
    )
    answer = stream.chunk_to_proto(result, 5)
    assert (answer.imported, answer.already_present, answer.first_index) == (1, 2, 5)
    (refusal,) = answer.refusals
    assert (refusal.index, refusal.request_id, refusal.code) == (7, "r-7", "INVALID_ARGUMENT")
    assert [(v.field, v.description) for v in refusal.violations] == [
        ("phone", "bad"),
        ("brand", "bad"),
    ]
    assert answer.consistency_token == ""  # nothing written, nothing to wait for


def test_an_answer_counts_the_promotional_opt_ins_it_accepted_not_given_in_writing():
    """Each allows informational campaigns only (47 CFR 64.1200(a)(2)): the import is
    told when it imports them, not when their promotional sends are denied."""
    methods = {
        "said": lpb.COLLECTION_METHOD_VERBAL,
        "imported": lpb.COLLECTION_METHOD_API_IMPORT,
        "refused": lpb.COLLECTION_METHOD_API_IMPORT,
        "signed": lpb.COLLECTION_METHOD_PAPER,
    }
    records = [
        api.ImportRecord(opt_in=opt_in("+14155550100", "acme", "promo", T0, rid, method=m))
        for rid, m in methods.items()
    ]
    receipt = opt_in("+14155550100", "acme", "promo", T0, "receipt")
    receipt.tier, receipt.method = lpb.CONSENT_TIER_INFORMATIONAL, lpb.COLLECTION_METHOD_VERBAL
    records.append(api.ImportRecord(opt_in=receipt))
    items = stream.items_from_proto(records, 0)
    result = ChunkResult(imported=3, present=1, refusals=[Refusal(2, "refused", "X", ())])

    answer = stream.chunk_to_proto(result, 0, items)

    assert answer.informational_only == 2  # said and imported; not the refused one


def test_an_opt_out_that_cannot_be_translated_is_held_at_its_own_time_under_the_same_id():
    """Its time placed the hold; the hold's id, from all else it said, is the one an
    import held before the time was read, so a re-run holds nothing new."""
    message = api.RecordOptOutRequest(request_id="x", phone="+14155552671", brand="acme")
    before = stream.items_from_proto([api.ImportRecord(opt_out=message)], 0)[0].held
    message.occurred_at.FromDatetime(T0)

    (item,) = stream.items_from_proto([api.ImportRecord(opt_out=message)], 0)

    assert item.held is not None and before is not None
    assert item.held.occurred_at == T0
    assert item.held.request_id == before.request_id


@pytest.mark.asyncio(loop_scope="session")
async def test_a_stream_idle_after_an_answer_holds_none_of_that_message():
    """A client may send a message and then wait, for minutes, without closing: the
    stream held its last message and every record of it (megabytes at 1,000 records)
    until the next came, so idle streams multiplied the service's memory."""
    more = asyncio.Event()

    async def one_then_idle() -> AsyncIterator[api.ImportConsentsRequest]:
        async for message in messages(1, 200):
            yield message
        await more.wait()

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Item) for o in gc.get_objects())

    answers = stream.answer_chunks(SlowFirst(), one_then_idle())  # type: ignore[arg-type]
    before = alive()
    answer = await anext(answers)
    await asyncio.sleep(0.05)  # the stream waits for the next message

    assert answer.imported == 199
    assert alive() == before
    more.set()
    assert [a async for a in answers] == []


@pytest.mark.asyncio(loop_scope="session")
async def test_streams_sharing_their_caller_s_slots_work_on_no_more_than_one_stream_would():
    """Each stream worked on up to ``IN_FLIGHT`` chunks of its own, so a caller (with
    no rate limit) that opened 100 streams had 400 worked on at once, and other
    callers' calls passed their deadlines. Its streams share one stream's slots, and
    each chunk gives its slot back however it ends, so a later stream still gets one."""
    imports, shared = SlowFirst(), asyncio.Semaphore(stream.IN_FLIGHT)

    async def imported(count: int) -> list[int]:
        answers = stream.answer_chunks(imports, messages(count, 2), shared=shared)  # type: ignore[arg-type]
        return [a.first_index async for a in answers]

    done = await asyncio.gather(*(imported(4) for _ in range(5)))

    assert done == [[0, 2, 4, 6]] * 5
    assert imports.most_at_once == stream.IN_FLIGHT
    cancelled = asyncio.ensure_future(imported(8))
    await asyncio.sleep(0.01)  # its first chunks are being worked on
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await imported(1) == [0]
    assert shared._value == stream.IN_FLIGHT  # every slot given back


def test_a_caller_s_streams_share_one_set_of_slots_and_are_bounded_in_number():
    """A caller's streams share one stream's slots, another caller has its own, and a
    caller holding ``MAX_STREAMS`` open is refused another until one ends."""
    callers = stream.CallerImports()

    with contextlib.ExitStack() as held:
        acme = [held.enter_context(callers.opened("acme-app")) for _ in range(stream.MAX_STREAMS)]
        assert all(slots is acme[0] for slots in acme)
        assert acme[0]._value == stream.IN_FLIGHT
        with pytest.raises(RateLimited) as refused:
            held.enter_context(callers.opened("acme-app"))
        assert refused.value.caller == "acme-app"
        assert f"{stream.MAX_STREAMS} import streams" in str(refused.value)
        with callers.opened("globex-app") as globex:
            assert globex is not acme[0]
    with callers.opened("acme-app") as again:  # every one ended
        assert again is acme[0]
