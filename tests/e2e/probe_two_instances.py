"""A red-team probe of two service instances on one Kafka ledger and one view (not
part of the suite: run it by name, ``pytest tests/e2e/probe_two_instances.py -s``).

Each test writes through one instance and reads through the other, or sends two
writes at once, one to each, then asks both with the answers' consistency tokens
(and, where the README promises it, without one): no read may allow a send after
an opt-out, a hold or a tightened rule that was acknowledged, and no opt-out may be
lost. Every test prints what it counted (outcomes, copies found in the ledger);
``test_a_random_mix_agrees`` compares CanSend, CanSendBatch and CanSendAsOf on both
instances after a seeded mix of writes sent in concurrent pairs (PROBE_SEED, 1;
PROBE_PHONES, 40)."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken, Stream
from ledger.retention import add_years
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    held_info,
    inbound,
    kafka_settings,
    opt_in,
    opt_out,
    sent,
    service_settings,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMO = "+12125550140"
ALERTS = "+12125550141"
NUMBERS = {"promo": PROMO, "alerts": ALERTS}
REFRESH = 0.05  # the harness's CONSENT_FRESHNESS_REFRESH_MS


async def _two(
    tmp_path: Any, dsn: str, bootstrap: str, clocks: Sequence[Clock]
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Two instances on one ledger and view, each on its clock, with acme's campaigns
    promo and alerts (each replies reach through a number of its own) applied on both."""
    prefix, group = f"two-{uuid.uuid4().hex[:8]}.", f"group-{uuid.uuid4().hex[:8]}"
    runtimes: list[Runtime] = []
    try:
        for name, clock in zip(("a", "b"), clocks, strict=True):
            (tmp_path / name).mkdir()
            kafka = kafka_settings(bootstrap, prefix)
            settings = service_settings(tmp_path / name, dsn, kafka=kafka, group=group)
            runtime = Runtime(settings, clock=clock)
            await runtime.start()
            runtimes.append(runtime)
        token = ConsistencyToken({})
        async with client(runtimes[0].address) as admin:
            for campaign, number in NUMBERS.items():
                start = min(c.now for c in clocks) - timedelta(days=1)
                w = await admin.DefineCampaign(define("acme", campaign, start, [number]))
                token = token.merge(ConsistencyToken.decode(w.consistency_token))
        for runtime in runtimes:
            assert runtime.guard is not None
            assert await runtime.guard.wait_for_token(token, timeout=60)
        yield runtimes[0], runtimes[1]
    finally:
        for runtime in runtimes:
            await runtime.stop()


@pytest.fixture
async def pair(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances sharing one clock (the next noon in Los Angeles), and the clock."""
    clock = Clock()
    async for runtimes in _two(tmp_path, postgres_dsn, kafka_bootstrap, [clock, clock]):
        yield runtimes, clock


@pytest.fixture
async def apart(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances whose clocks are 90 s apart: A's ahead of B's."""
    b = Clock()
    a = Clock(b.now + timedelta(seconds=90))
    async for runtimes in _two(tmp_path, postgres_dsn, kafka_bootstrap, [a, b]):
        yield runtimes, (a, b)


def merged(*tokens: str) -> str:
    token = ConsistencyToken({})
    for t in tokens:
        if t:
            token = token.merge(ConsistencyToken.decode(t))
    return token.encode()


async def asked(
    c: Client, phone: str, campaign: str, token: str = "", kind: int = lpb.MESSAGE_KIND_REGULAR
) -> list[api.Decision]:
    """CanSend's and a one-number CanSendBatch's answers."""
    one = await c.CanSend(
        api.CanSendRequest(
            phone=phone,
            brand="acme",
            campaign=campaign,
            message_kind=kind,
            at_least_as_fresh=token,
        )
    )
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            brand="acme",
            campaign=campaign,
            phones=[phone],
            message_kind=kind,
            at_least_as_fresh=token,
        )
    )
    return [one, batch.decisions[0]]


def allowed(answers: Sequence[Any]) -> bool:
    return any(a.allowed for a in answers)


async def opted_in(
    ca: Client, cb: Client, phone: str, when: datetime, campaigns: Sequence[str] = ("promo",)
) -> str:
    """Opt ``phone`` in to ``campaigns`` through A, seen allowed through both."""
    token = ""
    for campaign in campaigns:
        g = await ca.RecordOptIn(opt_in(phone, "acme", campaign, when - timedelta(minutes=5)))
        token = merged(token, g.consistency_token)
    for c in (ca, cb):
        for campaign in campaigns:
            assert all(a.allowed for a in await asked(c, phone, campaign, token))
    return token


def held(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The token and candidate event id of a refusal whose opt-out is held for review."""
    info = held_info(err)
    assert info is not None, err.details()
    return info["consistency_token"], info["candidate_event_id"]


def held_token(err: grpc.aio.AioRpcError) -> str:
    return held(err)[0]


async def imported(c: Client, records: Sequence[api.ImportRecord], chunk: int = 40) -> list[Any]:
    def chunks() -> Iterator[api.ImportConsentsRequest]:
        for start in range(0, len(records), chunk):
            yield api.ImportConsentsRequest(records=records[start : start + chunk])

    stream = c.stub.ImportConsents(
        chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
    )
    return [answer async for answer in stream]


def report(name: str, tally: Counter[str]) -> None:
    print(f"\n{name}: {dict(sorted(tally.items()))}")


def counted(result: Any, label: str, tally: Counter[str], tokens: list[str]) -> None:
    """Count ``result`` of a write gathered with ``return_exceptions`` under ``label``
    (its status code's name, or OK), keeping an OK write's token; anything but a
    gRPC error is the probe's own failure, raised."""
    if isinstance(result, grpc.aio.AioRpcError):
        tally[f"{label}{result.code().name}"] += 1
    elif isinstance(result, BaseException):
        raise result
    else:
        tally[f"{label}OK"] += 1
        tokens.append(result.consistency_token)


async def test_an_opt_out_through_one_is_denied_by_the_other(pair):
    """A STOP text or a RecordOptOut through one; CanSend and CanSendBatch through the
    other, with the write's token at once, and without one two refresh intervals
    later and just past one interval while four clients load the reader."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        phones = [f"+1415555{3000 + i:04d}" for i in range(40)]
        for phone in phones:
            await opted_in(ca, cb, phone, when)
        done = asyncio.Event()

        async def load(c: Client) -> None:
            while not done.is_set():
                await c.CanSendBatch(
                    api.CanSendBatchRequest(brand="acme", campaign="promo", phones=phones[-4:])
                )

        loaders: list[asyncio.Task[None]] = []
        try:
            for i, phone in enumerate(phones[:-4]):
                writer, reader = (ca, cb) if i % 2 == 0 else (cb, ca)
                if i == 18:
                    loaders = [asyncio.create_task(load(reader)) for _ in range(4)]
                if i % 3 == 0:
                    w = await writer.HandleInboundMessage(inbound(phone, PROMO, "STOP", when))
                else:
                    w = await writer.RecordOptOut(opt_out(phone, "acme", "promo", when))
                if i < 18:
                    answers = await asked(reader, phone, "promo", w.consistency_token)
                    tally["token"] += 2
                    await asyncio.sleep(2 * REFRESH)
                else:
                    await asyncio.sleep(REFRESH + 0.001)
                    answers = []
                answers += await asked(reader, phone, "promo")
                tally["no token"] += 2
                if allowed(answers):
                    wrong.append((i, [str(x) for x in answers]))
        finally:
            done.set()
            await asyncio.gather(*loaders)
    report("opt-outs", tally)
    assert not wrong, wrong


async def test_holds_placed_through_one_and_resolved_through_the_other(pair):
    """A refused opt-out's hold, and a 21610 outcome's (with and without a recorded
    send), placed through one and read through the other; then a reviewer's
    dismissal through the other at once with a STOP to another campaign through the
    first: the STOP still denies it."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
        client(b.address) as xb,
    ):
        for i in range(18):
            phone = f"+1415555{3100 + i:04d}"
            await opted_in(ca, cb, phone, when, ("promo", "alerts"))
            (writer, reader), reviewer = ((ca, cb), xb) if i % 2 == 0 else ((cb, ca), xa)
            if i % 3 == 0:  # a STOP under an opt-in's request id
                rid = uuid.uuid4().hex
                earlier = when - timedelta(minutes=4)
                await writer.RecordOptIn(opt_in(phone, "acme", "promo", earlier, rid))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await writer.RecordOptOut(opt_out(phone, "acme", None, when, rid))
                token, candidate = held(refused.value)
            else:  # the provider says the person opted out
                message = f"SM-{uuid.uuid4().hex[:10]}"
                if i % 3 == 1:
                    await reader.RecordMessageSent(
                        sent(
                            phone, "acme", "promo", when - timedelta(minutes=3), message_id=message
                        )
                    )
                outcome = api.RecordDeliveryOutcomeRequest(
                    request_id=uuid.uuid4().hex,
                    phone=phone,
                    brand="acme",
                    message_id=message,
                    outcome=lpb.DELIVERY_OUTCOME_FAILED,
                    error_code="21610",
                    occurred_at=ts(when - timedelta(minutes=2)),
                )
                try:
                    w = await writer.RecordDeliveryOutcome(outcome)
                    token, candidate = w.consistency_token, w.event_ids[1]
                except grpc.aio.AioRpcError as err:
                    token, candidate = held(err)
            for c in (ca, cb):
                answers = await asked(c, phone, "alerts", token)
                tally[api.Reason.Name(answers[0].reason)] += 2
                if allowed(answers):
                    wrong.append((i, "held", [str(x) for x in answers]))
            dismissal = reviewer.ResolveRevocationCandidate(
                api.ResolveRevocationCandidateRequest(
                    request_id=uuid.uuid4().hex,
                    phone=phone,
                    brand="acme",
                    candidate_event_id=candidate,
                    resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                    occurred_at=ts(when + timedelta(seconds=1)),
                    resolved_by="alice",
                )
            )
            stop = writer.HandleInboundMessage(
                inbound(phone, ALERTS, "STOP", when + timedelta(seconds=1))
            )
            results = await asyncio.gather(dismissal, stop, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            token = merged(token, *(r.consistency_token for r in results))
            for c in (ca, cb):
                answers = await asked(c, phone, "alerts", token)
                tally[f"after: {api.Reason.Name(answers[0].reason)}"] += 2
                if allowed(answers):
                    wrong.append((i, "dismissed", [str(x) for x in answers]))
    report("holds", tally)
    assert not wrong, wrong


async def test_rules_changed_through_one_are_read_by_the_other(pair):
    """The brand's revoke-all setting through one, after and before STOPs to promo
    through the other, read for alerts; a campaign made age-gated, capped at one a
    day after one send, or given sending hours that exclude now, through one and read
    through the other with the change's token."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
        client(b.address) as xb,
    ):
        phones = [f"+1415555{3300 + i:04d}" for i in range(8)]
        stops = {}
        for i, phone in enumerate(phones):
            await opted_in(ca, cb, phone, when, ("promo", "alerts"))
            if i < 4:
                w = await (cb if i % 2 else ca).HandleInboundMessage(
                    inbound(phone, PROMO, "STOP", when - timedelta(minutes=1))
                )
                stops[phone] = w.consistency_token
        setting = await ca.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="acme", revoke_all=True)
        )
        for i, phone in enumerate(phones):
            if i < 4:
                token = merged(setting.consistency_token, stops[phone])
            else:
                w = await (cb if i % 2 else ca).HandleInboundMessage(
                    inbound(phone, PROMO, "STOP", when)
                )
                token = w.consistency_token
            answers = await asked(cb if i % 2 == 0 else ca, phone, "alerts", token)
            tally[f"revoke-all: {api.Reason.Name(answers[0].reason)}"] += 2
            if allowed(answers):
                wrong.append((phone, "revoke-all", [str(x) for x in answers]))

        changes = {
            "age-gated": lpb.CampaignPolicy(age_gated=True),
            "one a day": lpb.CampaignPolicy(daily_cap=1),
            "hours": lpb.CampaignPolicy(
                quiet_hours=lpb.QuietHours(start_minute_of_day=780, end_minute_of_day=900)
            ),
        }
        for i, (name, policy) in enumerate([*changes.items()] * 2):
            campaign, phone = f"c{i}", f"+1415555{3400 + i:04d}"
            admin, reader = (xa, cb) if i % 2 == 0 else (xb, ca)
            d = await admin.DefineCampaign(define("acme", campaign, when - timedelta(days=1)))
            g = await ca.RecordOptIn(opt_in(phone, "acme", campaign, when - timedelta(hours=1)))
            s = await ca.RecordMessageSent(
                sent(phone, "acme", campaign, when - timedelta(minutes=30))
            )
            before = merged(d.consistency_token, g.consistency_token, s.consistency_token)
            assert all(x.allowed for x in await asked(reader, phone, campaign, before))
            w = await admin.ChangeCampaignPolicy(
                api.ChangeCampaignPolicyRequest(
                    request_id=uuid.uuid4().hex,
                    brand="acme",
                    campaign=campaign,
                    policy=policy,
                    occurred_at=ts(when - timedelta(minutes=1)),
                )
            )
            answers = await asked(reader, phone, campaign, w.consistency_token)
            tally[f"{name}: {answers[0].allowed}"] += 2
            if allowed(answers):
                wrong.append((name, [str(x) for x in answers]))
    report("rules", tally)
    assert not wrong, wrong


async def test_one_request_through_both_at_once(pair):
    """The same RecordOptOut, the same one-record import, the same STOP text (one
    request id) sent to both at once: each answer's token denies on either instance,
    each instance denies at once without one, the view lists every fact once however
    many copies the ledger holds (counted)."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(18):
            phone = f"+1415555{3500 + i:04d}"
            await opted_in(ca, cb, phone, when)
            how = ["RecordOptOut", "ImportConsents", "HandleInboundMessage"][i % 3]
            writes: list[Awaitable[Any]]
            if how == "RecordOptOut":
                request = opt_out(phone, "acme", "promo", when)
                writes = [c.RecordOptOut(request) for c in (ca, cb)]
            elif how == "ImportConsents":
                record = api.ImportRecord(opt_out=opt_out(phone, "acme", None, when))
                writes = [imported(c, [record]) for c in (ca, cb)]
            else:
                text = inbound(phone, PROMO, "STOP", when)
                writes = [c.HandleInboundMessage(text) for c in (ca, cb)]
            results = await asyncio.gather(*writes)
            tokens = [r[0].consistency_token if isinstance(r, list) else r.consistency_token
                      for r in results]  # fmt: skip
            partition = a.ledger.partition_for(phone)
            assert partition is not None
            stored = await a.ledger.read(Stream.SUBSCRIBERS, partition, 0)
            copies = Counter(str(r.event.event_id) for r in stored if r.event.phone == phone)
            tally[f"{how}: most copies {max(copies.values())}"] += 1
            events = await ca.ListEvents(
                api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=merged(*tokens))
            )
            listed = Counter(e.event.event_id for e in events.events)
            if max(listed.values()) > 1:
                wrong.append((i, how, "listed twice", listed))
            for c in (ca, cb):
                for token in (*tokens, ""):
                    if allowed(await asked(c, phone, "promo", token)):
                        wrong.append((i, how, c is ca, token))
    report("copies", tally)
    assert not wrong, wrong


async def test_an_import_id_reused_by_a_write_through_the_other(pair):
    """An import of an opt-out through one and, at once through the other, an opt-in
    under the same id: whichever takes the id, the number is denied (the opt-out
    recorded, or held for review)."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(16):
            phone = f"+1415557{i:04d}"
            await opted_in(ca, cb, phone, when)
            rid = f"imp-{uuid.uuid4().hex}"
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            campaign = "promo" if i % 4 < 2 else None
            record = api.ImportRecord(opt_out=opt_out(phone, "acme", campaign, when, rid))
            results = await asyncio.gather(
                imported(first, [record]),
                second.RecordOptIn(
                    opt_in(phone, "acme", "promo", when - timedelta(seconds=30), rid)
                ),
                return_exceptions=True,
            )
            tokens = []
            answers, write = results
            if isinstance(answers, BaseException):
                raise answers
            (answer,) = answers
            tokens.append(answer.consistency_token)
            tally[f"import: {answer.imported} imported, {answer.held_for_review} held"] += 1
            counted(write, "opt-in: ", tally, tokens)
            if isinstance(write, grpc.aio.AioRpcError) and held_info(write):
                tokens.append(held_token(write))
            for c in (ca, cb):
                if allowed(await asked(c, phone, "promo", merged(*tokens))):
                    wrong.append((i, results))
    report("import ids", tally)
    assert not wrong, wrong


async def test_overlapping_opt_out_imports_through_both(pair):
    """One file of 120 opt-outs imported through both at once (in opposite orders):
    each record appended once, and each import's answers deny every number, on the
    other instance with their tokens and on its own at once without."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for round_ in range(3):
            phones = [f"+1415553{round_}{i:03d}" for i in range(120)]
            for phone in phones:
                await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=9)))
            records = [
                api.ImportRecord(
                    opt_out=opt_out(
                        phone,
                        "acme",
                        None if i % 2 else "promo",
                        when - timedelta(minutes=1),
                        f"imp-{round_}-{i}",
                    )
                )
                for i, phone in enumerate(phones)
            ]
            through_a, through_b = await asyncio.gather(
                imported(ca, records), imported(cb, records[::-1])
            )
            for c, answers in ((ca, through_a), (cb, through_b)):
                tally["imported"] += sum(x.imported for x in answers)
                tally["already present"] += sum(x.already_present for x in answers)
                other = cb if c is ca else ca
                token = merged(*(x.consistency_token for x in answers))
                for reader, fresh in ((c, ""), (other, token)):
                    batch = await reader.CanSendBatch(
                        api.CanSendBatchRequest(
                            brand="acme", campaign="promo", phones=phones, at_least_as_fresh=fresh
                        )
                    )
                    tally["numbers asked"] += len(phones)
                    if any(d.allowed for d in batch.decisions):
                        wrong.append((round_, reader is ca, fresh))
    report("imports", tally)
    assert not wrong, wrong


async def test_an_opt_in_stated_before_an_opt_out_sent_at_once(pair):
    """An opt-out (RecordOptOut or a STOP text) through one and, at once through the
    other, an opt-in stated a second or two before it: the opt-out stands."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(16):
            phone = f"+1415555{3600 + i:04d}"
            await opted_in(ca, cb, phone, when)
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            if i % 4 < 2:
                out = first.RecordOptOut(opt_out(phone, "acme", "promo", when))
            else:
                out = first.HandleInboundMessage(inbound(phone, PROMO, "STOP", when))
            earlier = when - timedelta(seconds=1 + i % 2)
            results = await asyncio.gather(
                out, second.RecordOptIn(opt_in(phone, "acme", "promo", earlier)),
                return_exceptions=True,
            )  # fmt: skip
            tokens = []
            for r in results:
                counted(r, "", tally, tokens)
            for c in (ca, cb):
                if allowed(await asked(c, phone, "promo", merged(*tokens))):
                    wrong.append((i, results))
    report("stated before", tally)
    assert not wrong, wrong


async def test_owed_replies_across_instances(pair):
    """A STOP, HELP or other text through one; the reply's kind asked through the
    other, then recorded sent through the first and asked again: one confirmation,
    one help reply, and nothing regular after the STOP."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    kinds = [
        ("STOP", lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION),
        ("HELP", lpb.MESSAGE_KIND_HELP_REPLY),
        ("what time is it?", lpb.MESSAGE_KIND_CONVERSATION_REPLY),
    ]
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(12):
            phone = f"+1415558{i:04d}"
            await opted_in(ca, cb, phone, when)
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            body, kind = kinds[i % 3]
            text = inbound(phone, PROMO, body, when - timedelta(seconds=30))
            w = await first.HandleInboundMessage(text)
            owed = await asked(second, phone, "promo", w.consistency_token, kind)
            tally[f"{body[:4]} reply: {owed[0].allowed}"] += 1
            s = await first.RecordMessageSent(
                sent(phone, "acme", "promo", when - timedelta(seconds=10), kind=kind)
            )
            token = merged(w.consistency_token, s.consistency_token)
            again = await asked(second, phone, "promo", token, kind)
            regular = await asked(second, phone, "promo", token)
            tally[f"{body[:4]} again: {again[0].allowed}, regular: {regular[0].allowed}"] += 1
            if body != "what time is it?" and allowed(again):
                wrong.append((i, body, "twice", [str(x) for x in again]))
            if body == "STOP" and allowed(regular):
                wrong.append((i, body, "regular", [str(x) for x in regular]))
    report("owed replies", tally)
    assert not wrong, wrong


async def test_an_erasure_through_one_while_the_other_writes(pair):
    """Six years on, an erasure through one while the other records an opt-out, a
    fresh opt-in, or a refused opt-out's hold for the number: the opt-out and the
    hold still deny. The opt-in, answered OK, is sealed with the key the erasure
    destroys, so it counts for nothing (SUBJECT_ERASED) wherever it was placed; unless
    the erasure, reading the history after it, is refused for the retention period
    it starts again."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address) as xa, client(b.address) as xb:
        phones = [f"+1415559{i:04d}" for i in range(18)]
        old: set[str] = set()
        for phone in phones:
            g = await xa.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
            old.update(g.event_ids)
        clock.now = now = add_years(when, 6)
        for i, phone in enumerate(phones):
            first, second = (xa, xb) if i % 2 == 0 else (xb, xa)
            what = ["opt-in", "opt-out", "hold"][i % 3]
            erasure = first.RequestErasure(
                api.RequestErasureRequest(
                    request_id=uuid.uuid4().hex, phone=phone, brand="acme", reference="DSR"
                )
            )

            async def write(c: Client = second, phone: str = phone, what: str = what) -> str:
                stated = now - timedelta(seconds=5)
                if what == "opt-in":
                    return (
                        await c.RecordOptIn(opt_in(phone, "acme", "promo", stated))
                    ).consistency_token
                if what == "opt-out":
                    return (
                        await c.RecordOptOut(opt_out(phone, "acme", "promo", stated))
                    ).consistency_token
                rid = uuid.uuid4().hex
                await c.RecordOptIn(opt_in(phone, "acme", "promo", stated, rid))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await c.RecordOptOut(opt_out(phone, "acme", "promo", stated, rid))
                return held_token(refused.value)

            erased, written = await asyncio.gather(erasure, write(), return_exceptions=True)
            if isinstance(written, BaseException):
                raise written
            if isinstance(erased, grpc.aio.AioRpcError):
                # The write came first: its fact starts the retention period again.
                assert erased.code() == grpc.StatusCode.FAILED_PRECONDITION, erased
                tally["erasure refused"] += 1
                token = written
            elif isinstance(erased, BaseException):
                raise erased
            else:
                token = merged(erased.consistency_token, written)
            for c in (xa, xb):
                answers = await asked(c, phone, "promo", token)
                tally[f"{what}: {api.Reason.Name(answers[0].reason)}"] += 2
                if answers[0].allowed != answers[1].allowed:
                    wrong.append((i, what, "CanSendBatch differs", [str(x) for x in answers]))
                if what != "opt-in" and allowed(answers):
                    wrong.append((i, what, [str(x) for x in answers]))
                evidence = {e for x in answers for e in x.evidence_event_ids}
                if not isinstance(erased, BaseException) and allowed(answers) and old & evidence:
                    wrong.append((i, what, "the erased opt-in allowed", [str(x) for x in answers]))
    report("erasure", tally)
    assert not wrong, wrong


async def test_stops_to_a_number_no_campaign_sends_from(pair):
    """STOP, STOPALL, a reply like one and UNSUBSCRIBE to a number no campaign sends
    from, through one with the brand's token or the operator's: every campaign of the
    brand is denied through the other."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
        client(b.address) as xb,
    ):
        for i in range(16):
            phone = f"+1415552{i:04d}"
            await opted_in(ca, cb, phone, when, ("promo", "alerts"))
            writer = [ca, xa, cb, xb][i % 4]
            reader = cb if writer in (ca, xa) else ca
            body = ["STOP", "STOPALL", "please stop texting me", "UNSUBSCRIBE"][i // 4]
            try:
                w = await writer.HandleInboundMessage(inbound(phone, "+12125550199", body, when))
                token = w.consistency_token
            except grpc.aio.AioRpcError as err:
                token = held_token(err)
            for campaign in NUMBERS:
                answers = await asked(reader, phone, campaign, token)
                tally[api.Reason.Name(answers[0].reason)] += 2
                if allowed(answers):
                    wrong.append((i, body, campaign, [str(x) for x in answers]))
    report("unowned", tally)
    assert not wrong, wrong


async def test_clocks_ninety_seconds_apart(apart):
    """A STOP text, a campaign's or a brand-wide opt-out, stated by the writer's
    clock, read through both; then a START stated a second later by the other's
    clock (perhaps before the STOP by A's): counted."""
    (a, b), (clock_a, clock_b) = apart
    tally, wrong = Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(16):
            phone = f"+1415554{i:04d}"
            await opted_in(cb, ca, phone, clock_b.now)
            (first, own), (second, other) = [(ca, clock_a), (cb, clock_b)][
                :: 1 if i % 2 == 0 else -1
            ]
            mode = (i // 2) % 4
            if mode == 0:
                w = await first.HandleInboundMessage(inbound(phone, PROMO, "STOP", own.now))
            elif mode == 1:
                w = await first.RecordOptOut(opt_out(phone, "acme", "promo", own.now))
            elif mode == 2:
                w = await first.HandleInboundMessage(inbound(phone, PROMO, "STOPALL", own.now))
            else:
                w = await first.RecordOptOut(opt_out(phone, "acme", None, own.now))
            for c in (ca, cb):
                answers = await asked(c, phone, "promo", w.consistency_token)
                tally[f"stop: {api.Reason.Name(answers[0].reason)}"] += 2
                if allowed(answers):
                    wrong.append((i, mode, c is ca, [str(x) for x in answers]))
            start = inbound(phone, PROMO, "START", other.now + timedelta(seconds=1))
            s = await second.HandleInboundMessage(start)
            token = merged(w.consistency_token, s.consistency_token)
            for c in (ca, cb):
                answers = await asked(c, phone, "promo", token)
                ahead = "START ahead" if other is clock_a else "START behind"
                tally[f"{ahead}: {api.Reason.Name(answers[0].reason)}"] += 2
    report("clocks apart", tally)
    assert not wrong, wrong


async def test_a_random_mix_agrees(pair):
    """A seeded mix of opt-ins, opt-outs, STOP, START and STOPALL texts, refused
    opt-outs held, 21610 outcomes and resolutions, sent in concurrent pairs, one to
    each instance; then CanSend and CanSendBatch on both and CanSendAsOf for now on
    both must agree for each number and campaign."""
    (a, b), clock = pair
    when = clock.now
    seed = int(os.environ.get("PROBE_SEED", "1"))
    tally, disagreements = Counter[str](), []
    kinds = ["in"] * 6 + ["start"] * 4 + ["out", "stop", "stopall"] * 2 + ["hold", "21610"]
    kinds += ["resolve"] * 6
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
        client(b.address) as xb,
    ):

        async def one_number(k: int) -> None:
            phone = f"+1415556{k:04d}"
            rng = random.Random(f"{seed}/{k}")  # each number's own: they draw concurrently
            tokens: list[str] = []
            pending: list[str] = []

            async def held(call: Awaitable[Any]) -> Any:
                try:
                    return await call
                except grpc.aio.AioRpcError as err:
                    info = held_info(err)
                    if info:
                        pending.append(info["candidate_event_id"])
                        tokens.append(info["consistency_token"])
                    raise

            def write() -> tuple[str, Awaitable[Any]]:
                kind = rng.choice(kinds)
                c, x = rng.choice([(ca, xa), (cb, xb)])
                campaign = rng.choice(list(NUMBERS))
                at = when - timedelta(minutes=rng.randint(1, 40), seconds=rng.randint(0, 59))
                if kind == "resolve" and pending:
                    resolution = rng.choice(
                        [lpb.CANDIDATE_RESOLUTION_DISMISSED, lpb.CANDIDATE_RESOLUTION_REVOKED]
                    )
                    return kind, x.ResolveRevocationCandidate(
                        api.ResolveRevocationCandidateRequest(
                            request_id=uuid.uuid4().hex,
                            phone=phone,
                            brand="acme",
                            candidate_event_id=rng.choice(pending),
                            resolution=resolution,
                            occurred_at=ts(when),
                            resolved_by="rev",
                        )
                    )
                if kind in ("in", "resolve"):
                    return "in", c.RecordOptIn(opt_in(phone, "acme", campaign, at))
                if kind == "out":
                    scope = rng.choice([campaign, None])
                    return kind, c.RecordOptOut(opt_out(phone, "acme", scope, at))
                if kind in ("stop", "start", "stopall"):
                    text = inbound(phone, NUMBERS[campaign], kind.upper(), at)
                    return kind, c.HandleInboundMessage(text)
                if kind == "hold":

                    async def hold() -> Any:
                        rid = uuid.uuid4().hex
                        await c.RecordOptIn(opt_in(phone, "acme", campaign, at, rid))
                        return await held(c.RecordOptOut(opt_out(phone, "acme", campaign, at, rid)))

                    return kind, hold()

                async def refused_by_the_provider() -> Any:
                    message = f"SM-{uuid.uuid4().hex[:10]}"
                    if rng.random() < 0.5:
                        recorded = await c.RecordMessageSent(
                            sent(phone, "acme", campaign, at, message_id=message)
                        )
                        tokens.append(recorded.consistency_token)
                    outcome = api.RecordDeliveryOutcomeRequest(
                        request_id=uuid.uuid4().hex,
                        phone=phone,
                        brand="acme",
                        message_id=message,
                        outcome=lpb.DELIVERY_OUTCOME_FAILED,
                        error_code="21610",
                        occurred_at=ts(at + timedelta(seconds=5)),
                    )
                    return await held(x.RecordDeliveryOutcome(outcome))

                return kind, refused_by_the_provider()

            for _ in range(rng.randint(2, 4)):
                writes = [write() for _ in range(rng.randint(1, 3))]
                results = await asyncio.gather(*(w for _, w in writes), return_exceptions=True)
                for (kind, _), r in zip(writes, results, strict=True):
                    counted(r, f"{kind}: ", tally, tokens)
            token = merged(*tokens)
            for campaign in NUMBERS:
                answers = [*await asked(ca, phone, campaign, token)]
                answers += await asked(cb, phone, campaign, token)
                for x in (xa, xb):
                    answers.append(
                        await x.CanSendAsOf(
                            api.CanSendAsOfRequest(
                                phone=phone,
                                brand="acme",
                                campaign=campaign,
                                at=ts(when),
                                at_least_as_fresh=token,
                            )
                        )
                    )
                said = {(x.allowed, x.reason) for x in answers}
                tally[f"allowed: {answers[0].allowed}"] += 1
                if len(said) != 1:
                    disagreements.append((phone, campaign, said))

        await asyncio.gather(
            *(one_number(k) for k in range(int(os.environ.get("PROBE_PHONES", "40"))))
        )
    report("random mix", tally)
    assert not disagreements, disagreements
