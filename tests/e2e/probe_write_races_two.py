"""Races of the write paths (single writes, batched sends, imports, texts) through two
instances on one Kafka ledger and one view, each repeated over many numbers, 20 at
once (a probe, not part of the suite: run it by name, ``pytest
tests/e2e/probe_write_races_two.py -s``; RACE_ROUNDS sets how many numbers a race
runs over, 200 by default). Each test prints what it counted and fails on a wrong
allow after an acknowledged opt-out, an acknowledged write missing or listed
twice, or a retry answered otherwise than the first answer, or one text delivered
to both at once under two request ids recorded twice (it was, in every race, before
the copy waited for the text another instance was recording)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from tests.e2e.harness import Clock, client, inbound, opt_in, opt_out, sent, ts
from tests.e2e.probe_two_instances import (
    PROMO,
    _two,
    allowed,
    asked,
    imported,
    merged,
    report,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def pair(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances sharing one clock (``probe_two_instances._two``), and the clock."""
    clock = Clock()
    async for runtimes in _two(tmp_path, postgres_dsn, kafka_bootstrap, [clock, clock]):
        yield runtimes, clock


ROUNDS = int(os.environ.get("RACE_ROUNDS", "200"))
WIDE = 20  # races run at once


async def in_groups(race, n: int) -> None:
    for start in range(0, n, WIDE):
        await asyncio.gather(*(race(i) for i in range(start, min(n, start + WIDE))))


def code(r: Any) -> str:
    if isinstance(r, grpc.aio.AioRpcError):
        return r.code().name
    if isinstance(r, BaseException):
        raise r
    return "OK"


async def listed(c, phone: str, token: str) -> list[Any]:
    events = await c.ListEvents(
        api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=token)
    )
    return list(events.events)


async def test_tight_loop_after_an_opt_out(pair):
    """Opt-out through A acknowledged; CanSend/Batch through B in a tight loop, with
    the token at once and without it: no allow with the token, none without it past
    one refresh interval."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415561{i:04d}"
            g = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=5)))
            for c in (ca, cb):
                assert allowed(await asked(c, phone, "promo", g.consistency_token))
            writer, reader = (ca, cb) if i % 2 == 0 else (cb, ca)
            if i % 3 == 0:
                w = await writer.HandleInboundMessage(inbound(phone, PROMO, "STOP", when))
            elif i % 3 == 1:
                w = await writer.RecordOptOut(opt_out(phone, "acme", "promo", when))
            else:
                w = await writer.RecordOptOut(opt_out(phone, "acme", None, when))
            acked = time.monotonic()
            for k in range(30):
                token = w.consistency_token if k % 2 == 0 else ""
                answers = await asked(reader, phone, "promo", token)
                age = time.monotonic() - acked
                tally[f"{'token' if token else 'none'}: {answers[0].allowed}"] += 1
                if allowed(answers) and (token or age > 0.055):
                    wrong.append((phone, k, round(age * 1000, 1), [str(x) for x in answers]))

        await in_groups(race, ROUNDS)
    report("tight", tally)
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("scope", ["promo", "brand", "stop"])
async def test_opt_in_and_opt_out_at_the_same_instant_on_both(pair, scope):
    """An opt-in on one, an opt-out (of the campaign, of the brand, a STOP) with the
    SAME occurred_at on the other, at once: the number is denied, every acknowledged
    write is listed once."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    base = {"promo": 6200, "brand": 6400, "stop": 6600}[scope]
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
        client(b.address) as xb,
    ):

        async def race(i: int) -> None:
            phone = f"+1415{base // 100:02d}{i:05d}"
            at = when - timedelta(minutes=1)
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            if i % 4 >= 2:
                await first.RecordOptIn(opt_in(phone, "acme", "promo", at - timedelta(hours=1)))
            if scope == "stop":
                out = second.HandleInboundMessage(inbound(phone, PROMO, "STOP", at))
            else:
                campaign = "promo" if scope == "promo" else None
                out = second.RecordOptOut(opt_out(phone, "acme", campaign, at))
            results = await asyncio.gather(
                first.RecordOptIn(opt_in(phone, "acme", "promo", at)), out, return_exceptions=True
            )
            tally[f"in {code(results[0])}, out {code(results[1])}"] += 1
            tokens = [r.consistency_token for r in results if code(r) == "OK"]
            if code(results[1]) != "OK":
                wrong.append((phone, "opt-out refused", str(results[1])))
            for c in (ca, cb):
                answers = await asked(c, phone, "promo", merged(*tokens))
                tally[api.Reason.Name(answers[0].reason)] += 1
                if allowed(answers):
                    wrong.append((phone, [str(x) for x in answers]))
            for c in (xa, xb):
                for moment in (at, at + timedelta(seconds=1), when):
                    asof = await c.CanSendAsOf(
                        api.CanSendAsOfRequest(
                            phone=phone,
                            brand="acme",
                            campaign="promo",
                            at=ts(moment),
                            at_least_as_fresh=merged(*tokens),
                        )
                    )
                    if asof.allowed:
                        wrong.append((phone, "as of allowed", moment))
                got = await c.GetConsent(
                    api.GetConsentRequest(
                        phone=phone,
                        brand="acme",
                        campaign="promo",
                        at_least_as_fresh=merged(*tokens),
                    )
                )
                tally[api.ConsentState.Name(got.state)] += 1
            events = await listed(ca, phone, merged(*tokens))
            ids = Counter(e.event.event_id for e in events)
            want = {i for r in results if code(r) == "OK" for i in r.event_ids}
            if set(ids) < want or max(ids.values()) > 1:
                wrong.append((phone, "listed", ids, want))

        await in_groups(race, ROUNDS)
    report(f"same instant {scope}", tally)
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("payloads", ["same", "different"])
async def test_one_request_id_to_both(pair, payloads):
    """The same request id at once to both: with the same payload, both answered
    alike (the same event ids) and one fact; with different payloads, one recorded
    and the other ALREADY_EXISTS; a retry after is answered as the first."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    base = 70 if payloads == "same" else 72
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415{base}{i:05d}"
            rid = uuid.uuid4().hex
            at = when - timedelta(minutes=1)
            kind = i % 4
            g = await ca.RecordOptIn(opt_in(phone, "acme", "promo", at - timedelta(hours=1)))
            if kind == 0:
                reqs = [opt_out(phone, "acme", "promo", at, rid)] * 2
                call = "RecordOptOut"
            elif kind == 1:
                reqs = [opt_in(phone, "acme", "alerts", at, rid)] * 2
                call = "RecordOptIn"
            elif kind == 2:
                text = inbound(phone, PROMO, "STOP", at, rid)
                reqs = [text, text]
                call = "HandleInboundMessage"
            else:
                reqs = [opt_out(phone, "acme", None, at, rid)] * 2
                call = "RecordOptOut"
            if payloads == "different":
                other = type(reqs[0])()
                other.CopyFrom(reqs[0])
                other.occurred_at.CopyFrom(ts(at - timedelta(seconds=1)))
                if call == "HandleInboundMessage":
                    other.message_id = "SMx" + uuid.uuid4().hex[:10]
                reqs = [reqs[0], other]
            results = await asyncio.gather(
                getattr(ca, call)(reqs[0]), getattr(cb, call)(reqs[1]), return_exceptions=True
            )
            codes = [code(r) for r in results]
            tally[f"{call} {kind}: {codes}"] += 1
            ok = [r for r in results if not isinstance(r, BaseException)]
            if payloads == "same":
                if codes != ["OK", "OK"] or ok[0].event_ids != ok[1].event_ids:
                    wrong.append((phone, call, codes, [list(r.event_ids) for r in ok]))
            elif sorted(codes) != ["ALREADY_EXISTS", "OK"]:
                wrong.append((phone, call, codes, [str(r) for r in results]))
            token = merged(g.consistency_token, *(r.consistency_token for r in ok))
            # a retry through each, of each payload
            for c in (ca, cb):
                for n, req in enumerate(reqs):
                    try:
                        again = await getattr(c, call)(req)
                        if ok and list(again.event_ids) != list(ok[0].event_ids):
                            wrong.append((phone, "retry differs", n, list(again.event_ids)))
                        token = merged(token, again.consistency_token)
                    except grpc.aio.AioRpcError as err:
                        if payloads == "same" or codes[n] == "OK":
                            wrong.append((phone, "retry refused", n, err.code().name))
            events = await listed(ca, phone, token)
            ids = Counter(e.event.event_id for e in events)
            flagged = [e for e in events if e.event.event_type == "RevocationCandidateFlagged"]
            tally[f"flagged {len(flagged)}"] += 1
            if (
                max(ids.values()) > 1
                or len(events) - len(flagged) != 1 + (len(ok[0].event_ids) if ok else 0)
                or len(flagged) > 1
            ):
                wrong.append((phone, "listed", [e.event.event_type for e in events]))
            if call != "RecordOptIn":
                for c in (ca, cb):
                    if allowed(await asked(c, phone, "promo", token)):
                        wrong.append((phone, "allowed after opt-out"))

        await in_groups(race, ROUNDS)
    report(f"one id {payloads}", tally)
    assert not wrong, wrong[:5]


def _message(phone: str, at, mid: str) -> api.SentMessage:
    return api.SentMessage(
        phone=phone,
        campaign="promo",
        message_id=mid,
        occurred_at=ts(at),
        included_opt_out_language=True,
        identified_sender=True,
        from_number=PROMO,
    )


async def test_a_batch_on_one_while_an_opt_out_on_the_other(pair):
    """RecordMessagesSent of 20 numbers through A while an opt-out (or a STOP) of one
    of them lands on B: the batch's messages counted once, the opt-out's number
    denied, health and the opt-out rate count what was acknowledged."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    start = when - timedelta(hours=2)
    sends: set[str] = set()
    outs: set[str] = set()
    tokens: list[str] = []
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
    ):
        rounds = max(1, ROUNDS // 10)

        async def race(r: int) -> None:
            phones = [f"+1415800{r:02d}{k:02d}" for k in range(20)]
            for p in phones:
                g = await ca.RecordOptIn(opt_in(p, "acme", "promo", start))
                tokens.append(g.consistency_token)
            at = when - timedelta(minutes=30)
            batch_via, out_via = (ca, cb) if r % 2 == 0 else (cb, ca)
            msgs = [
                _message(p, at, f"SM{r:03d}{k:03d}{uuid.uuid4().hex[:6]}")
                for k, p in enumerate(phones)
            ]
            victim = phones[r % 20]
            if r % 2:
                out = out_via.HandleInboundMessage(inbound(victim, PROMO, "STOP", at))
            else:
                out = out_via.RecordOptOut(opt_out(victim, "acme", "promo", at))
            req = api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=msgs
            )
            results = await asyncio.gather(
                batch_via.RecordMessagesSent(req), out, return_exceptions=True
            )
            tally[f"batch {code(results[0])}, out {code(results[1])}"] += 1
            for res in results:
                if not isinstance(res, BaseException):
                    tokens.append(res.consistency_token)
            if code(results[0]) == "OK":
                sends.update(m.message_id for m in msgs)
                # retry through the other
                again = await out_via.RecordMessagesSent(req)
                if list(again.event_ids) != list(results[0].event_ids):
                    wrong.append((r, "batch retry differs"))
            if code(results[1]) == "OK":
                outs.add(victim)
            token = merged(*tokens)
            for c in (ca, cb):
                if allowed(await asked(c, victim, "promo", token)):
                    wrong.append((r, victim, "allowed"))

        await in_groups(race, rounds)
        token = merged(*tokens)
        health = await xa.GetCampaignHealth(
            api.GetCampaignHealthRequest(
                brand="acme",
                campaign="promo",
                start_time=ts(start - timedelta(minutes=1)),
                end_time=ts(when),
                at_least_as_fresh=token,
            )
        )
        rate = await xa.GetOptOutRate(
            api.GetOptOutRateRequest(
                brand="acme",
                campaign="promo",
                start_time=ts(start - timedelta(minutes=1)),
                end_time=ts(when),
                at_least_as_fresh=token,
            )
        )
        counts = health.campaigns[0].counts if health.campaigns else None
        print("\nhealth", counts, "rate", rate)
        attributed = counts.opt_outs if counts else 0
        if (
            counts is None
            or counts.messages_sent != len(sends)
            or (attributed + health.unattributed_opt_outs != len(outs))
        ):
            wrong.append(("health", counts, health.unattributed_opt_outs, len(sends), len(outs)))
        if rate.messages_sent != len(sends) or rate.opt_outs != len(outs):
            wrong.append(("rate", rate.messages_sent, rate.opt_outs, len(sends), len(outs)))
    report("batch vs opt-out", tally)
    assert not wrong, wrong[:5]


async def test_an_import_on_one_while_single_writes_on_the_other(pair):
    """An import of opt-ins (and opt-outs) on A while single opt-outs (and opt-ins)
    of the same numbers at the same instant land on B: every number that has an
    acknowledged opt-out is denied on both; imported and single facts listed once."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        rounds = max(1, ROUNDS // 20)
        outs: set[str] = set()
        all_tokens: list[str] = []
        for r in range(rounds):
            phones = [f"+1415810{r:02d}{k:02d}" for k in range(40)]
            at = when - timedelta(minutes=3)
            importer, single = (ca, cb) if r % 2 == 0 else (cb, ca)
            records = []
            for k, p in enumerate(phones):
                if k % 2 == 0:
                    records.append(
                        api.ImportRecord(opt_in=opt_in(p, "acme", "promo", at, f"imp-{r}-{k}"))
                    )
                else:
                    records.append(
                        api.ImportRecord(
                            opt_out=opt_out(
                                p, "acme", "promo" if k % 4 == 1 else None, at, f"imp-{r}-{k}"
                            )
                        )
                    )

            async def singles(
                phones: list[str] = phones, single: Any = single, at: Any = at
            ) -> list[Any]:
                out = []
                for k, p in enumerate(phones):
                    if k % 2 == 0:
                        call = single.RecordOptOut(
                            opt_out(p, "acme", "promo" if k % 4 == 0 else None, at)
                        )
                    else:
                        call = single.RecordOptIn(opt_in(p, "acme", "promo", at))
                    out.append(call)
                return await asyncio.gather(*out, return_exceptions=True)

            answers, results = await asyncio.gather(
                imported(importer, records, chunk=10), singles()
            )
            tokens = [x.consistency_token for x in answers]
            tally["imported"] += sum(x.imported for x in answers)
            tally["refused"] += sum(len(x.refusals) for x in answers)
            for k, res in enumerate(results):
                tally[f"single {'out' if k % 2 == 0 else 'in'} {code(res)}"] += 1
                if not isinstance(res, BaseException):
                    tokens.append(res.consistency_token)
                elif k % 2 == 0:
                    wrong.append((r, k, "single opt-out refused", str(res)))
            for x in answers:
                for ref in x.refusals:
                    tally[f"refusal {ref.code} {[v.field for v in ref.violations]}"] += 1
            token = merged(*tokens)
            all_tokens.append(token)
            outs.update(phones)  # each number has an opt-out, imported or single
            for c in (ca, cb):
                batch = await c.CanSendBatch(
                    api.CanSendBatchRequest(
                        brand="acme", campaign="promo", phones=phones, at_least_as_fresh=token
                    )
                )
                for p, d in zip(phones, batch.decisions, strict=True):
                    tally[f"allowed {d.allowed}"] += 1
                    if d.allowed:
                        wrong.append((r, p, str(d)))
            for p in phones[:6]:
                events = await listed(ca, p, token)
                ids = Counter(e.event.event_id for e in events)
                tally[f"listed {sorted(e.event.event_type for e in events)}"] += 1
                if max(ids.values()) > 1:
                    wrong.append((p, "listed twice"))
        rate = await ca.GetOptOutRate(
            api.GetOptOutRateRequest(
                brand="acme",
                start_time=ts(when - timedelta(minutes=10)),
                end_time=ts(when),
                at_least_as_fresh=merged(*all_tokens),
            )
        )
        print("\nrate", rate.opt_outs, rate.opt_outs_pending_review, len(outs))
        if rate.opt_outs != len(outs):
            wrong.append(("rate", rate.opt_outs, len(outs)))
    report("import vs singles", tally)
    assert not wrong, wrong[:5]


async def test_a_brand_wide_opt_out_racing_a_campaign_opt_in(pair):
    """A brand-wide opt-out on one, an opt-in of a campaign stated a moment after on
    the other at once: whichever way, the answers on both instances agree, and an
    opt-in stated before (or at) the opt-out never allows."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415820{i:04d}"
            at = when - timedelta(minutes=2)
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            g = await first.RecordOptIn(opt_in(phone, "acme", "alerts", at - timedelta(hours=1)))
            delta = timedelta(milliseconds=[-1, 0, 1][i % 3])
            results = await asyncio.gather(
                first.RecordOptOut(opt_out(phone, "acme", None, at)),
                second.RecordOptIn(opt_in(phone, "acme", "promo", at + delta)),
                return_exceptions=True,
            )
            tally[f"{delta.total_seconds() * 1000:+.0f}ms: {[code(r) for r in results]}"] += 1
            token = merged(
                g.consistency_token, *(r.consistency_token for r in results if code(r) == "OK")
            )
            said = []
            for c in (ca, cb):
                for camp in ("promo", "alerts"):
                    ans = await asked(c, phone, camp, token)
                    said.append((camp, ans[0].allowed, ans[1].allowed))
                    if camp == "alerts" and allowed(ans):
                        wrong.append((phone, "alerts allowed"))
                    if camp == "promo" and delta <= timedelta(0) and allowed(ans):
                        wrong.append((phone, "promo allowed", delta))
                    tally[f"{delta.total_seconds() * 1000:+.0f}ms {camp}: {ans[0].allowed}"] += 1
            if len({s for s in said if s[0] == "promo"}) != 1:
                wrong.append((phone, "disagree", said))

        await in_groups(race, ROUNDS)
    report("brand-wide vs opt-in", tally)
    assert not wrong, wrong[:5]


async def test_a_stop_racing_a_batched_send(pair):
    """A STOP through one while a batch naming the number (a regular message, stated
    just after the STOP) is recorded through the other: the STOP's confirmation is
    owed once, the number denied, the send counted once."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415830{i:04d}"
            other = f"+1415831{i:04d}"
            at = when - timedelta(minutes=2)
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            tokens = []
            for p in (phone, other):
                g = await first.RecordOptIn(opt_in(p, "acme", "promo", at - timedelta(hours=1)))
                tokens.append(g.consistency_token)
            msgs = [
                _message(p, at + timedelta(milliseconds=i % 3), f"SM{uuid.uuid4().hex[:14]}")
                for p in (other, phone)
            ]
            req = api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=msgs
            )
            results = await asyncio.gather(
                first.HandleInboundMessage(inbound(phone, PROMO, "STOP", at)),
                second.RecordMessagesSent(req),
                return_exceptions=True,
            )
            tally[f"{[code(r) for r in results]}"] += 1
            if code(results[0]) == "OK":
                tally[f"reply {api.ReplyKind.Name(results[0].reply)}"] += 1
            token = merged(*tokens, *(r.consistency_token for r in results if code(r) == "OK"))
            for c in (ca, cb):
                if allowed(await asked(c, phone, "promo", token)):
                    wrong.append((phone, "allowed"))
                conf = await asked(c, phone, "promo", token, lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)
                tally[f"confirmation allowed {conf[0].allowed}"] += 1
            events = await listed(ca, phone, token)
            types = Counter(e.event.event_type for e in events)
            tally[str(sorted(types.items()))] += 1
            if types.get("MessageSent", 0) > 1:
                wrong.append((phone, "sent twice", types))

        await in_groups(race, ROUNDS)
    report("STOP vs batch", tally)
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("how", ["same-id-same", "same-id-different", "overlapping-messages"])
async def test_batches_on_both_at_once(pair, how):
    """One RecordMessagesSent request id to both at once (the same messages, or one
    message changed), or two calls of their own whose messages overlap: each message
    answered with one event id wherever asked, counted once in health."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    start = when - timedelta(hours=3)
    sends: set[str] = set()
    tokens: list[str] = []
    base = {"same-id-same": 840, "same-id-different": 850, "overlapping-messages": 860}[how]
    async with (
        client(a.address, "acme-app") as ca,
        client(b.address, "acme-app") as cb,
        client(a.address) as xa,
    ):
        rounds = max(1, ROUNDS // 4)

        async def race(r: int) -> None:
            phones = [f"+1415{base}{r:03d}{k}" for k in range(10)]
            at = when - timedelta(minutes=30)
            msgs = [_message(p, at, f"SM{uuid.uuid4().hex[:14]}") for p in phones]
            rid = uuid.uuid4().hex
            one = api.RecordMessagesSentRequest(request_id=rid, brand="acme", messages=msgs)
            two = api.RecordMessagesSentRequest()
            two.CopyFrom(one)
            if how == "same-id-different":
                two.messages[3].occurred_at.CopyFrom(ts(at - timedelta(seconds=1)))
            elif how == "overlapping-messages":
                two.request_id = uuid.uuid4().hex
                del two.messages[:4]
                two.messages.append(
                    _message(f"+1415{base}{r:03d}9", at, f"SM{uuid.uuid4().hex[:14]}")
                )
            results = await asyncio.gather(
                ca.RecordMessagesSent(one), cb.RecordMessagesSent(two), return_exceptions=True
            )
            codes = [code(x) for x in results]
            tally[str(codes)] += 1
            ok = [x for x in results if not isinstance(x, BaseException)]
            tokens.extend(x.consistency_token for x in ok)
            if how == "same-id-different":
                if sorted(codes) != ["ALREADY_EXISTS", "OK"]:
                    wrong.append((r, codes, [str(x)[:300] for x in results]))
            elif codes != ["OK", "OK"]:
                wrong.append((r, codes, [str(x)[:300] for x in results]))
            answers: dict[str, set[str]] = {}
            for req, res in zip((one, two), results, strict=True):
                if isinstance(res, BaseException):
                    continue
                sends.update(m.message_id for m in req.messages)
                for m, e in zip(req.messages, res.event_ids, strict=True):
                    answers.setdefault(m.message_id, set()).add(e)
            # retries through the other instance
            for c, req, res in ((cb, one, results[0]), (ca, two, results[1])):
                if isinstance(res, BaseException):
                    continue
                again = await c.RecordMessagesSent(req)
                if list(again.event_ids) != list(res.event_ids):
                    wrong.append((r, "retry differs"))
                for m, e in zip(req.messages, again.event_ids, strict=True):
                    answers.setdefault(m.message_id, set()).add(e)
            split = {m: ids for m, ids in answers.items() if len(ids) > 1}
            if split:
                wrong.append((r, "one message, two ids", split))
            token = merged(*tokens)
            for p in phones[:3]:
                events = await listed(ca, p, token)
                n = sum(1 for e in events if e.event.event_type == "MessageSent")
                tally[f"listed sends {n}"] += 1
                if n != 1:
                    wrong.append((r, p, "listed sends", n))

        await in_groups(race, rounds)
        health = await xa.GetCampaignHealth(
            api.GetCampaignHealthRequest(
                brand="acme",
                campaign="promo",
                start_time=ts(start),
                end_time=ts(when),
                at_least_as_fresh=merged(*tokens),
            )
        )
        counts = health.campaigns[0].counts if health.campaigns else None
        print("\nhealth", counts, len(sends))
        if counts is None or counts.messages_sent != len(sends):
            wrong.append(("health", counts, len(sends)))
    report(f"batches {how}", tally)
    assert not wrong, wrong[:5]


async def test_one_import_through_both_at_once(pair):
    """The same opt-in import (with an opt-out of some numbers after) through both at
    once: every record imported once in all, listed once, and the opted-out denied."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for r in range(max(1, ROUNDS // 40)):
            phones = [f"+1415870{r:02d}{k:02d}" for k in range(60)]
            at = when - timedelta(minutes=9)
            records = []
            for k, p in enumerate(phones):
                records.append(
                    api.ImportRecord(opt_in=opt_in(p, "acme", "promo", at, f"in-{r}-{k}"))
                )
                if k % 3 == 0:
                    records.append(
                        api.ImportRecord(
                            opt_out=opt_out(
                                p, "acme", "promo", at + timedelta(minutes=1), f"out-{r}-{k}"
                            )
                        )
                    )
            x, y = await asyncio.gather(imported(ca, records, 25), imported(cb, records[::-1], 25))
            n_imp = sum(m.imported for m in (*x, *y))
            n_pre = sum(m.already_present for m in (*x, *y))
            n_ref = sum(len(m.refusals) for m in (*x, *y))
            tally[f"imported {n_imp} present {n_pre} refused {n_ref}"] += 1
            for m in (*x, *y):
                for ref in m.refusals:
                    tally[f"refusal {ref.code} {[v.field for v in ref.violations]}"] += 1
            if n_imp + n_pre != 2 * len(records) or n_imp < len(records):
                wrong.append((r, "imported", n_imp, n_pre, n_ref, len(records)))
            token = merged(*(m.consistency_token for m in (*x, *y)))
            for c in (ca, cb):
                batch = await c.CanSendBatch(
                    api.CanSendBatchRequest(
                        brand="acme", campaign="promo", phones=phones, at_least_as_fresh=token
                    )
                )
                for k, d in enumerate(batch.decisions):
                    if d.allowed != (k % 3 != 0):
                        wrong.append((r, k, d.allowed, api.Reason.Name(d.reason)))
            for p in phones[:9]:
                events = await listed(ca, p, token)
                ids = Counter(e.event.event_id for e in events)
                if max(ids.values()) > 1:
                    wrong.append((p, "listed twice"))
                tally[f"listed {len(events)}"] += 1
    report("one import twice", tally)
    assert not wrong, wrong[:5]


class Ticking(Clock):
    """A clock that moves on a millisecond each time it is read."""

    def __call__(self):
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
async def ticking(tmp_path, postgres_dsn, kafka_bootstrap):
    clock = Ticking()
    async for runtimes in _two(tmp_path, postgres_dsn, kafka_bootstrap, [clock, clock]):
        yield runtimes, clock


async def test_stamped_ahead_across_instances(ticking):
    """A consent (opt-in or START) stamped ahead on one, and at once an opt-out stamped
    a minute after it on the other (a client whose clock runs fast): never allowed."""
    (a, b), clock = ticking
    tally, wrong = Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415880{i:04d}"
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            g = await first.RecordOptIn(
                opt_in(phone, "acme", "promo", clock.now - timedelta(days=1))
            )
            tokens = [g.consistency_token]
            if i % 4 >= 2:
                o = await first.RecordOptOut(
                    opt_out(phone, "acme", "promo", clock.now - timedelta(hours=1))
                )
                tokens.append(o.consistency_token)
            ahead = clock.now + timedelta(minutes=3)
            if i % 4 >= 2:
                consent = first.HandleInboundMessage(inbound(phone, PROMO, "START", ahead))
            else:
                consent = first.RecordOptIn(opt_in(phone, "acme", "promo", ahead))
            which = [i % 3]
            if which[0] == 0:
                stop = second.RecordOptOut(
                    opt_out(phone, "acme", "promo", ahead + timedelta(minutes=1))
                )
            elif which[0] == 1:
                stop = second.HandleInboundMessage(
                    inbound(phone, PROMO, "STOP", ahead + timedelta(minutes=1))
                )
            else:
                stop = second.RecordOptOut(
                    opt_out(phone, "acme", None, ahead + timedelta(minutes=1))
                )
            if i % 8 < 4:
                results = await asyncio.gather(stop, consent, return_exceptions=True)
            else:
                results = await asyncio.gather(consent, stop, return_exceptions=True)
            tally[str([code(r) for r in results])] += 1
            tokens += [r.consistency_token for r in results if code(r) == "OK"]
            for c in (ca, cb):
                ans = await asked(c, phone, "promo", merged(*tokens))
                tally[api.Reason.Name(ans[0].reason)] += 1
                if allowed(ans):
                    wrong.append((phone, i, [str(x) for x in ans]))

        await in_groups(race, ROUNDS)
    report("stamped ahead", tally)
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("body", ["STOP", "HELP", "START"])
async def test_one_text_delivered_to_both_at_once(pair, body):
    """The same text (one provider message id), delivered under two request ids to
    both at once: recorded once, its reply owed to exactly one of the answers, and a
    third delivery after owes none."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    base = {"STOP": 890, "HELP": 891, "START": 892}[body]
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415{base}{i:04d}"
            at = when - timedelta(minutes=2)
            g = await ca.RecordOptIn(opt_in(phone, "acme", "promo", at - timedelta(hours=1)))
            tokens = [g.consistency_token]
            if body == "START":
                o = await cb.RecordOptOut(
                    opt_out(phone, "acme", "promo", at - timedelta(minutes=1))
                )
                tokens.append(o.consistency_token)
            text = inbound(phone, PROMO, body, at)
            other = api.HandleInboundMessageRequest()
            other.CopyFrom(text)
            other.request_id = uuid.uuid4().hex
            results = await asyncio.gather(
                ca.HandleInboundMessage(text),
                cb.HandleInboundMessage(other),
                return_exceptions=True,
            )
            codes = [code(r) for r in results]
            ok = [r for r in results if not isinstance(r, BaseException)]
            replies = [api.ReplyKind.Name(r.reply) for r in ok]
            tally[f"{codes} {sorted(replies)}"] += 1
            if codes != ["OK", "OK"] or sum(r.reply != api.REPLY_KIND_NONE for r in ok) != 1:
                wrong.append((phone, codes, replies))
            if ok and len({tuple(r.event_ids) for r in ok}) != 1:
                tally["event ids differ"] += 1
            third = api.HandleInboundMessageRequest()
            third.CopyFrom(text)
            third.request_id = uuid.uuid4().hex
            again = await (cb if i % 2 else ca).HandleInboundMessage(third)
            if again.reply != api.REPLY_KIND_NONE:
                wrong.append((phone, "third owes", api.ReplyKind.Name(again.reply)))
            # the first request retried: as first answered
            for c, req, res in ((cb, text, results[0]), (ca, other, results[1])):
                if isinstance(res, BaseException):
                    continue
                retry = await c.HandleInboundMessage(req)
                if (retry.reply, list(retry.event_ids)) != (res.reply, list(res.event_ids)):
                    wrong.append(
                        (
                            phone,
                            "retry differs",
                            api.ReplyKind.Name(retry.reply),
                            api.ReplyKind.Name(res.reply),
                        )
                    )
            tokens += [r.consistency_token for r in ok] + [again.consistency_token]
            events = await listed(ca, phone, merged(*tokens))
            types = Counter(e.event.event_type for e in events)
            tally[str(sorted(types.items()))] += 1
            if types["InboundMessageReceived"] != 1:
                tally["recorded twice"] += 1
                wrong.append((phone, "recorded twice", types))
            kind = {
                "STOP": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
                "HELP": lpb.MESSAGE_KIND_HELP_REPLY,
                "START": lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
            }[body]
            s = await ca.RecordMessageSent(sent_msg(phone, at + timedelta(seconds=5), kind))
            token = merged(*tokens, s.consistency_token)
            for c in (ca, cb):
                rep = await asked(c, phone, "promo", token, kind)
                tally[f"second reply {rep[0].allowed}"] += 1
                if allowed(rep):
                    wrong.append((phone, "second reply allowed", types))

        await in_groups(race, ROUNDS)
    report(f"one text {body}", tally)
    assert not wrong, wrong[:5]


async def test_two_stops_at_once_confirm_once(pair):
    """Two STOP texts (their own message ids) through both at once: the number denied,
    and once one confirmation is recorded sent, no second is allowed."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415893{i:04d}"
            at = when - timedelta(minutes=2)
            g = await ca.RecordOptIn(opt_in(phone, "acme", "promo", at - timedelta(hours=1)))
            results = await asyncio.gather(
                ca.HandleInboundMessage(inbound(phone, PROMO, "STOP", at)),
                cb.HandleInboundMessage(
                    inbound(phone, PROMO, "STOP", at + timedelta(milliseconds=i % 2))
                ),
            )
            tally[str(sorted(api.ReplyKind.Name(r.reply) for r in results))] += 1
            token = merged(g.consistency_token, *(r.consistency_token for r in results))
            s = await ca.RecordMessageSent(
                sent_msg(phone, at + timedelta(seconds=5), lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)
            )
            token = merged(token, s.consistency_token)
            for c in (ca, cb):
                conf = await asked(c, phone, "promo", token, lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)
                tally[f"second confirmation {conf[0].allowed}"] += 1
                if allowed(conf):
                    wrong.append((phone, "second confirmation allowed"))
                if allowed(await asked(c, phone, "promo", token)):
                    wrong.append((phone, "allowed"))

        await in_groups(race, ROUNDS)
    report("two stops", tally)
    assert not wrong, wrong[:5]


def sent_msg(phone, at, kind):
    return sent(
        phone, "acme", "promo", at, kind=kind, included_opt_out_language=False, from_number=PROMO
    )


@pytest.mark.parametrize("content", ["same", "different"])
async def test_a_single_send_and_a_batch_share_a_message_id(pair, content):
    """RecordMessageSent on A and a batch holding the same message id on B at once:
    with the same content one event id answers both; with another, one is refused."""
    (a, b), clock = pair
    when, tally, wrong = clock.now, Counter[str](), []
    base = 894 if content == "same" else 895
    tokens: list[str] = []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415{base}{i:04d}"
            at = when - timedelta(minutes=20)
            mid = f"SM{uuid.uuid4().hex[:14]}"
            single = sent(phone, "acme", "promo", at, message_id=mid, from_number=PROMO)
            m = _message(phone, at if content == "same" else at - timedelta(seconds=1), mid)
            others = [_message(f"+1415{base}9{i:03d}", at, f"SM{uuid.uuid4().hex[:14]}")]
            batch = api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=[*others, m]
            )
            pair_ = [ca.RecordMessageSent(single), cb.RecordMessagesSent(batch)]
            if i % 2:
                pair_ = pair_[::-1]
            results = await asyncio.gather(*pair_, return_exceptions=True)
            if i % 2:
                results = results[::-1]
            codes = [code(r) for r in results]
            tally[str(codes)] += 1
            ok = [r for r in results if not isinstance(r, BaseException)]
            tokens.extend(r.consistency_token for r in ok)
            if content == "same":
                if codes != ["OK", "OK"] or results[0].event_ids[0] != results[1].event_ids[1]:
                    wrong.append((phone, codes, [list(r.event_ids) for r in ok]))
            elif sorted(codes) != ["ALREADY_EXISTS", "OK"]:
                wrong.append((phone, codes))
            events = await listed(ca, phone, merged(*tokens))
            n = sum(e.event.event_type == "MessageSent" for e in events)
            if n != 1:
                wrong.append((phone, "sends listed", n))

        await in_groups(race, ROUNDS)
    report(f"single vs batch {content}", tally)
    assert not wrong, wrong[:5]


async def test_an_import_stamped_ahead_racing_a_single_opt_out_stamped_later(ticking):
    """An import (through one) of an opt-in stamped three minutes ahead, and at once a
    single opt-out (or STOP, or brand-wide) stamped a minute after it through the
    other: never allowed; and the reverse, an imported opt-out and a single opt-in
    stated before it."""
    (a, b), clock = ticking
    tally, wrong = Counter[str](), []
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:

        async def race(i: int) -> None:
            phone = f"+1415896{i:04d}"
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            g = await first.RecordOptIn(
                opt_in(phone, "acme", "promo", clock.now - timedelta(days=1))
            )
            tokens = [g.consistency_token]
            ahead = clock.now + timedelta(minutes=3)
            later = ahead + timedelta(minutes=1)
            if i % 4 < 2:
                rec = api.ImportRecord(
                    opt_in=opt_in(phone, "acme", "promo", ahead, f"imp-{uuid.uuid4().hex}")
                )
                if i % 3 == 0:
                    single = second.RecordOptOut(opt_out(phone, "acme", "promo", later))
                elif i % 3 == 1:
                    single = second.HandleInboundMessage(inbound(phone, PROMO, "STOP", later))
                else:
                    single = second.RecordOptOut(opt_out(phone, "acme", None, later))
            else:
                rec = api.ImportRecord(
                    opt_out=opt_out(
                        phone, "acme", "promo" if i % 3 else None, later, f"imp-{uuid.uuid4().hex}"
                    )
                )
                single = second.RecordOptIn(opt_in(phone, "acme", "promo", ahead))
            answers, res = await asyncio.gather(
                imported(first, [rec]), single, return_exceptions=True
            )
            if isinstance(answers, BaseException):
                raise answers
            (ans,) = answers
            refused = [r.code for r in ans.refusals]
            tally[f"{i % 4 < 2}: imported {ans.imported} refused {refused} single {code(res)}"] += 1
            tokens.append(ans.consistency_token)
            if code(res) == "OK":
                tokens.append(res.consistency_token)
            for c in (ca, cb):
                got = await asked(c, phone, "promo", merged(*tokens))
                tally[api.Reason.Name(got[0].reason)] += 1
                if allowed(got):
                    wrong.append((phone, i, [str(x) for x in got]))

        await in_groups(race, ROUNDS)
    report("import stamped ahead", tally)
    assert not wrong, wrong[:5]
