"""Callers that give up: every write RPC sent with a short deadline (0.1 ms to 200 ms,
drawn log-uniformly) or cancelled after a random delay, then sometimes sent again
unchanged (same request id, same payload, a long deadline) and sometimes never, on
the Kafka ledger and on the embedded default's (a probe, not part of the suite: run
it by name, ``pytest tests/e2e/probe_cancelled_writes.py -s``; CANCEL_ROUNDS sets
the rounds, 240 by default, CANCEL_SEED the random seed, printed).

Afterwards, through the readers: each request's facts are recorded at most once; a
retry answers the event ids of any earlier acknowledged attempt; a batch is recorded
per message (the API's promise: each message as ``RecordMessageSent`` records it,
the call refused whole only for bad input), never a message twice; nothing is stuck
(a later write of the same number, and the same message under a new request id,
are answered within the freshness bound); an opt-out given up on leaves CanSend
allowed as before or denied, never an error, and denied exactly when the ledger
holds it; the answers are the same after a restart and after ``rebuild``. A second
test kills the service (SIGKILL) mid-burst and checks the same after its restart."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    defined,
    held_info,
    inbound,
    kafka_settings,
    now,
    opt_in,
    opt_out,
    running,
    sent,
    service_settings,
    ts,
    write_tokens,
)
from tests.e2e.test_fault_suite import _serve
from tests.e2e.test_rebuild_answers_alike import finished, rebuild

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROUNDS = int(os.environ.get("CANCEL_ROUNDS", "240"))
WIDE = int(os.environ.get("CANCEL_WIDE", "8"))
SEED = int(os.environ.get("CANCEL_SEED", str(random.randrange(1 << 30))))
SENDER = "+14155550100"
BOUND = 5.0  # the harness's freshness wait bound (FreshnessSettings.wait_bound)
METADATA = [("authorization", "Bearer admin-secret")]

KINDS = {
    # kind: weight
    "opt_in": 3,
    "opt_out": 3,
    "sent": 3,
    "batch": 3,
    "import": 2,
    "inbound_stop": 2,
    "reconfirm": 1,
    "delivery": 1,
    "age": 1,
    "location": 1,
    "hold_place": 1,
    "hold_release": 1,
    "resolve": 1,
    "define": 1,
    "brand_policy": 0.3,
}


@dataclass
class Attempt:
    round: int
    kind: str
    rpc: str
    request: Any
    phones: list[str]
    how: str = ""
    first: str = ""
    first_ids: list[str] | None = None
    retried: bool = False
    retry: str | None = None
    retry_ids: list[str] | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)
    import_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    revocation: bool = False  # the write is an opt-out of ``phones[0]``
    candidate: str = ""


def ids_of(answer: Any) -> list[str]:
    return list(getattr(answer, "event_ids", []) or [])


class Giver:
    """Sends a call the way a caller that gives up does."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def how(self) -> tuple[str, float]:
        if self.rng.random() < 0.5:
            return "deadline", 10 ** self.rng.uniform(-4, math.log10(0.2))
        return "cancel", self.rng.uniform(0, 0.2)

    async def unary(self, stub: Any, rpc: str, request: Any) -> tuple[str, str, Any]:
        method = getattr(stub, rpc)
        how, t = self.how()
        label = f"{how} {t * 1000:.2f} ms"
        if how == "deadline":
            try:
                return label, "OK", await method(request, metadata=METADATA, timeout=t)
            except grpc.aio.AioRpcError as err:
                return label, err.code().name, err
        call = method(request, metadata=METADATA, timeout=30)
        await asyncio.sleep(t)
        call.cancel()
        try:
            return label, "OK", await call
        except asyncio.CancelledError:
            return label, "CANCELLED", None
        except grpc.aio.AioRpcError as err:
            return label, err.code().name, err

    async def stream(
        self, stub: Any, messages: Sequence[api.ImportConsentsRequest]
    ) -> tuple[str, str, list[Any]]:
        how, t = self.how()
        label = f"{how} {t * 1000:.2f} ms"

        async def chunks() -> AsyncIterator[api.ImportConsentsRequest]:
            for m in messages:
                yield m

        answers: list[Any] = []
        call = stub.ImportConsents(
            chunks(), metadata=METADATA, timeout=t if how == "deadline" else 60
        )

        async def read() -> None:
            async for a in call:
                answers.append(a)

        try:
            if how == "deadline":
                try:
                    await read()
                except asyncio.CancelledError:  # grpc's own, as the service was killed
                    return label, "CANCELLED", answers
            else:
                reading = asyncio.ensure_future(read())
                await asyncio.sleep(t)
                call.cancel()
                try:
                    await reading
                except asyncio.CancelledError:
                    return label, "CANCELLED", answers
            return label, "OK", answers
        except grpc.aio.AioRpcError as err:
            return label, err.code().name, answers


UNAVAILABLE_AGAIN = Counter[str]()


async def unary_long(stub: Any, rpc: str, request: Any) -> tuple[str, Any]:
    """``rpc`` with a long deadline, sent again unchanged while UNAVAILABLE (a service
    just started catching up), as a caller does, for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return "OK", await getattr(stub, rpc)(request, metadata=METADATA, timeout=60)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                return err.code().name, err
            UNAVAILABLE_AGAIN[rpc] += 1
            await asyncio.sleep(0.5)


async def stream_long(stub: Any, messages: Sequence[api.ImportConsentsRequest]) -> tuple[str, Any]:
    async def chunks() -> AsyncIterator[api.ImportConsentsRequest]:
        for m in messages:
            yield m

    try:
        call = stub.ImportConsents(chunks(), metadata=METADATA, timeout=120)
        return "OK", [a async for a in call]
    except grpc.aio.AioRpcError as err:
        return err.code().name, err


class Numbers:
    def __init__(self, area: str) -> None:
        self.area, self.n = area, 0

    def __call__(self) -> str:
        self.n += 1
        assert self.n < 10_000
        return f"+1{self.area}555{self.n:04d}"


@dataclass
class World:
    """The numbers and requests a run uses."""

    when: datetime
    rng: random.Random
    single: Numbers = field(default_factory=lambda: Numbers("303"))
    batched: Numbers = field(default_factory=lambda: Numbers("720"))
    imported: Numbers = field(default_factory=lambda: Numbers("212"))


def batch_request(w: World, size: int) -> tuple[api.RecordMessagesSentRequest, list[str]]:
    per = 20 if size >= 100 else max(1, size // 3)
    phones = [w.batched() for _ in range(max(1, math.ceil(size / per)))]
    messages = []
    for j in range(size):
        phone = phones[j % len(phones)]
        messages.append(
            api.SentMessage(
                phone=phone,
                campaign="promo",
                message_id=f"SM{uuid.uuid4().hex[:16]}",
                kind=lpb.MESSAGE_KIND_REGULAR,
                occurred_at=ts(w.when - timedelta(hours=1) + timedelta(seconds=j)),
                included_opt_out_language=True,
                identified_sender=True,
            )
        )
    request = api.RecordMessagesSentRequest(
        request_id=uuid.uuid4().hex, brand="acme", messages=messages
    )
    return request, phones


async def prepared(c: Client, w: World, i: int, kind: str) -> Attempt:
    """The round's setup (acknowledged, long deadline) and the write to give up on."""
    when, rng = w.when, w.rng
    if kind == "batch":
        size = rng.choice([1, 1, 2, 7, 30, 100, 1000]) if rng.random() < 0.9 else 1000
        request, phones = batch_request(w, size)
        a = Attempt(i, kind, "RecordMessagesSent", request, phones)
        a.messages = [(m.phone, m.message_id) for m in request.messages]
        return a
    if kind == "import":
        phones = [w.imported() for _ in range(rng.choice([1, 5, 40]))]
        records = []
        for p in phones:
            records.append(
                api.ImportRecord(opt_in=opt_in(p, "acme", "promo", when - timedelta(days=2)))
            )
            if rng.random() < 0.4:
                records.append(
                    api.ImportRecord(opt_out=opt_out(p, "acme", None, when - timedelta(days=1)))
                )
        chunk = rng.choice([1, 3, 50])
        messages = [
            api.ImportConsentsRequest(records=records[s : s + chunk])
            for s in range(0, len(records), chunk)
        ]
        a = Attempt(i, kind, "ImportConsents", messages, phones)
        a.import_ids = [getattr(r, r.WhichOneof("record")).request_id for r in records]
        return a
    if kind == "define":
        request = define("acme", f"c{i}", when - timedelta(days=3), [])
        return Attempt(i, kind, "DefineCampaign", request, [])
    if kind == "brand_policy":
        request = api.SetBrandPolicyRequest(
            request_id=uuid.uuid4().hex, brand="initech", revoke_all=True
        )
        return Attempt(i, kind, "SetBrandPolicy", request, [])
    phone = w.single()
    if kind != "opt_in":
        setup = opt_in(phone, "acme", "promo", when - timedelta(hours=2))
        await c.RecordOptIn(setup, timeout=60)
    if kind == "opt_in":
        return Attempt(
            i,
            kind,
            "RecordOptIn",
            opt_in(phone, "acme", "promo", when - timedelta(hours=2)),
            [phone],
        )
    if kind == "opt_out":
        campaign = "promo" if rng.random() < 0.5 else None
        request = opt_out(phone, "acme", campaign, when - timedelta(minutes=30))
        return Attempt(i, kind, "RecordOptOut", request, [phone], revocation=True)
    if kind == "sent":
        request = sent(phone, "acme", "promo", when - timedelta(hours=1))
        a = Attempt(i, kind, "RecordMessageSent", request, [phone])
        a.messages = [(phone, request.message_id)]
        return a
    if kind == "inbound_stop":
        request = inbound(phone, SENDER, "STOP", when - timedelta(minutes=20))
        return Attempt(i, kind, "HandleInboundMessage", request, [phone], revocation=True)
    if kind == "reconfirm":
        request = api.RecordReconfirmationRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            campaign="promo",
            channel=lpb.REVOCATION_CHANNEL_API,
            occurred_at=ts(when - timedelta(minutes=40)),
        )
        return Attempt(i, kind, "RecordReconfirmation", request, [phone])
    if kind == "delivery":
        first = sent(phone, "acme", "promo", when - timedelta(hours=1))
        await c.RecordMessageSent(first, timeout=60)
        request = api.RecordDeliveryOutcomeRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            message_id=first.message_id,
            outcome=lpb.DELIVERY_OUTCOME_FAILED,
            error_code="30003",
            occurred_at=ts(when - timedelta(minutes=55)),
        )
        return Attempt(i, kind, "RecordDeliveryOutcome", request, [phone])
    if kind == "age":
        request = api.RecordAgeVerificationRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            method="id_check",
            occurred_at=ts(when - timedelta(minutes=50)),
            verified_21_plus=True,
        )
        return Attempt(i, kind, "RecordAgeVerification", request, [phone])
    if kind == "location":
        request = api.RecordSubscriberLocationRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            region="CO",
            occurred_at=ts(when - timedelta(minutes=45)),
        )
        return Attempt(i, kind, "RecordSubscriberLocation", request, [phone])
    if kind in ("hold_place", "hold_release"):
        hold = api.PlaceLegalHoldRequest(
            request_id=uuid.uuid4().hex, phone=phone, brand="acme", hold_id=f"m-{i}", reason="case"
        )
        if kind == "hold_place":
            return Attempt(i, kind, "PlaceLegalHold", hold, [phone])
        await c.PlaceLegalHold(hold, timeout=60)
        request = api.ReleaseLegalHoldRequest(
            request_id=uuid.uuid4().hex, phone=phone, brand="acme", hold_id=f"m-{i}"
        )
        return Attempt(i, kind, "ReleaseLegalHold", request, [phone])
    if kind == "resolve":
        padded = opt_out(phone, "ACME ", "promo", when - timedelta(minutes=30))
        try:
            await c.RecordOptOut(padded, timeout=60)
            raise AssertionError("an opt-out of brand 'ACME ' was taken")
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert info is not None, err
        resolution = rng.choice(
            [lpb.CANDIDATE_RESOLUTION_REVOKED, lpb.CANDIDATE_RESOLUTION_DISMISSED]
        )
        request = api.ResolveRevocationCandidateRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            candidate_event_id=info["candidate_event_id"],
            resolution=resolution,
            occurred_at=ts(when - timedelta(minutes=5)),
        )
        a = Attempt(i, kind, "ResolveRevocationCandidate", request, [phone])
        a.candidate = info["candidate_event_id"]
        a.revocation = resolution == lpb.CANDIDATE_RESOLUTION_REVOKED
        return a
    raise AssertionError(kind)


async def play(c: Client, w: World, giver: Giver, a: Attempt, retry_share: float) -> Attempt:
    """The write given up on, then perhaps retried unchanged."""
    if a.kind == "import":
        a.how, a.first, answers = await giver.stream(c.stub, a.request)
        a.tokens += [x.consistency_token for x in answers if x.consistency_token]
        a.first_ids = [f"{len(answers)} answers"] if a.first == "OK" else None
    else:
        a.how, a.first, answer = await giver.unary(c.stub, a.rpc, a.request)
        if a.first == "OK":
            a.first_ids = ids_of(answer)
            a.tokens.append(answer.consistency_token)
    a.retried = w.rng.random() < retry_share
    if not a.retried:
        return a
    if w.rng.random() < 0.5:
        await asyncio.sleep(w.rng.uniform(0, 0.3))
    if a.kind == "import":
        a.retry, answers = await stream_long(c.stub, a.request)
        if a.retry == "OK":
            refused = [r for x in answers for r in x.refusals]
            total = sum(x.imported + x.already_present for x in answers)
            a.retry_ids = [f"{total}/{len(a.import_ids)}", f"refused {len(refused)}"]
            a.tokens += [x.consistency_token for x in answers]
    else:
        a.retry, answer = await unary_long(c.stub, a.rpc, a.request)
        if a.retry == "OK":
            a.retry_ids = ids_of(answer)
            a.tokens.append(answer.consistency_token)
        else:
            a.retry_ids = [answer.details()]
    return a


def merged(tokens: Sequence[str]) -> str:
    token = ConsistencyToken({})
    for t in tokens:
        if t:
            token = token.merge(ConsistencyToken.decode(t))
    return token.encode()


async def listed(c: Client, phone: str, token: str) -> list[lpb.RecordedEvent]:
    out: list[lpb.RecordedEvent] = []
    page = ""
    while True:
        r = await c.ListEvents(
            api.ListEventsRequest(
                phone=phone, page_size=1000, page_token=page, at_least_as_fresh=token
            ),
            timeout=60,
        )
        out += list(r.events)
        page = r.next_page_token
        if not page:
            return out


async def ledger_end(runtime: Runtime) -> tuple[Counter[str], dict[str, Any], str]:
    """Each event id's count in the ledger itself, its events, and a token of the end."""
    assert runtime.ledger is not None
    count: Counter[str] = Counter()
    events: dict[str, Any] = {}
    offsets = {}
    for stream in Stream:
        ends = await runtime.ledger.end_offsets(stream)
        for partition, end in ends.items():
            offsets[(stream, partition)] = end
            start = 0
            while start < end:
                got = await runtime.ledger.read(stream, partition, start, 1000)
                if not got:
                    break
                for r in got:
                    count[str(r.event.event_id)] += 1
                    events[str(r.event.event_id)] = r.event
                start += len(got)
    return count, events, ConsistencyToken(offsets).encode()


@dataclass
class Findings:
    wrong: list[str] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)

    def fail(self, what: str) -> None:
        self.wrong.append(what)


async def check(
    c: Client, attempts: list[Attempt], token: str, found: Findings, *, when: datetime
) -> dict[str, list[lpb.RecordedEvent]]:
    """The invariants, read through the readers at ``token``."""
    phones = sorted(
        {p for a in attempts for p in a.phones} | {m[0] for a in attempts for m in a.messages}
    )
    events: dict[str, list[lpb.RecordedEvent]] = {}
    sem = asyncio.Semaphore(8)

    async def one(p: str) -> None:
        async with sem:
            events[p] = await listed(c, p, token)

    await asyncio.gather(*(one(p) for p in phones))
    by_id: dict[str, lpb.RecordedEvent] = {}
    for p, evs in events.items():
        ids = Counter(e.event.event_id for e in evs)
        for i, n in ids.items():
            if n > 1:
                found.fail(f"{p}: event {i} listed {n} times")
        for e in evs:
            by_id[e.event.event_id] = e
        # One fact per request, per type, per message.
        per: Counter[tuple[str, str, str]] = Counter()
        for e in evs:
            env = e.event
            which = env.WhichOneof("payload") or ""
            msg = env.message_sent.message_id if which == "message_sent" else ""
            per[(env.request_id, which, msg)] += 1
        for k, n in per.items():
            if n > 1 and k[1] != "revocation_candidate_resolved":
                found.fail(f"{p}: request {k} recorded {n} times")
        sends = Counter(
            e.event.message_sent.message_id
            for e in evs
            if e.event.WhichOneof("payload") == "message_sent"
        )
        for m, n in sends.items():
            if n > 1:
                found.fail(f"{p}: message {m} recorded {n} times")

    for a in attempts:
        found.tally[f"{a.kind}: first {a.first}"] += 1
        if a.retried:
            found.tally[f"{a.kind}: retry {a.retry}"] += 1
        if a.retried and a.retry != "OK":
            found.fail(
                f"round {a.round} {a.kind} ({a.how}, first {a.first}):"
                f" retry {a.retry} {a.retry_ids}"
            )
        if a.kind == "import":
            if (
                a.retried
                and a.retry == "OK"
                and a.retry_ids
                != [
                    f"{len(a.import_ids)}/{len(a.import_ids)}",
                    "refused 0",
                ]
            ):
                found.fail(f"round {a.round} import retry answered {a.retry_ids}")
            present = Counter(e.event.request_id for p in a.phones for e in events.get(p, []))
            for rid in a.import_ids:
                if present[rid] > 1:
                    found.fail(f"round {a.round} import id {rid} recorded {present[rid]} times")
            n = sum(1 for rid in a.import_ids if present[rid])
            if a.retried and a.retry == "OK" and n != len(a.import_ids):
                found.fail(f"round {a.round} import retried OK, {n}/{len(a.import_ids)} present")
            found.tally[
                "import: "
                + ("all" if n == len(a.import_ids) else "none" if n == 0 else "part")
                + (" (retried)" if a.retried else "")
            ] += 1
            continue
        if a.first == "OK" and a.retry == "OK" and a.first_ids != a.retry_ids:
            found.fail(
                f"round {a.round} {a.kind}: first answered {a.first_ids}, retry {a.retry_ids}"
            )
        answered = a.first_ids if a.first == "OK" else a.retry_ids if a.retry == "OK" else None
        if answered is not None and a.phones:
            for i in answered:
                if i not in by_id:
                    found.fail(f"round {a.round} {a.kind}: acknowledged {i} not listed")
        if a.messages:
            per_message = [
                sum(
                    1
                    for e in events.get(p, [])
                    if e.event.WhichOneof("payload") == "message_sent"
                    and e.event.message_sent.message_id == m
                )
                for p, m in a.messages
            ]
            n = sum(1 for x in per_message if x)
            if answered is not None and n != len(a.messages):
                found.fail(f"round {a.round} {a.kind}: acknowledged, {n}/{len(a.messages)} listed")
            found.tally[
                f"{a.kind} of {len(a.messages)}: "
                + ("all" if n == len(a.messages) else "none" if n == 0 else "part")
                + (" (retried)" if a.retried else "")
            ] += 1
    return events


async def nothing_stuck(
    c: Client,
    attempts: list[Attempt],
    events: dict[str, list[lpb.RecordedEvent]],
    found: Findings,
    when: datetime,
    *,
    later_ones: bool = True,
    again: bool = True,
) -> list[str]:
    """A later different write of each number, and each message given up on sent again
    under a new request id, answered within the bound; CanSend of an opt-out given up
    on never an error. Returns the new answers' tokens."""
    tokens: list[str] = []
    sem = asyncio.Semaphore(8)

    async def later(a: Attempt) -> None:
        async with sem:
            for phone in a.phones[:3] if later_ones else []:
                if a.kind == "import":
                    continue
                request = sent(phone, "acme", "promo", when - timedelta(minutes=10))
                t0 = time.monotonic()
                code, answer = await unary_long(c.stub, "RecordMessageSent", request)
                took = time.monotonic() - t0
                if code != "OK":
                    found.fail(
                        f"round {a.round} {a.kind}: a later send of {phone}:"
                        f" {code} {answer.details()}"
                    )
                else:
                    tokens.append(answer.consistency_token)
                if took > BOUND + 2:
                    found.fail(
                        f"round {a.round} {a.kind}: a later send of {phone} took {took:.1f} s"
                    )
                found.tally["later write > 1 s"] += took > 1
            if again and a.messages and not a.retried and a.first != "OK":
                for phone, message in a.messages[:5]:
                    request = sent(phone, "acme", "promo", when - timedelta(hours=1))
                    request.message_id = message
                    # the batch's message said the same (its time differs: the batch's own)
                    if a.kind == "batch":
                        m = next(x for x in a.request.messages if x.message_id == message)
                        request.occurred_at.CopyFrom(m.occurred_at)
                    listed_ids = [
                        e.event.event_id
                        for e in events.get(phone, [])
                        if e.event.WhichOneof("payload") == "message_sent"
                        and e.event.message_sent.message_id == message
                    ]
                    changed = a.round % 2 == 1
                    if changed:  # a corrected send of the message, under a new request id
                        request.included_opt_out_language = False
                    t0 = time.monotonic()
                    code, answer = await unary_long(c.stub, "RecordMessageSent", request)
                    took = time.monotonic() - t0
                    found.tally[
                        f"{a.kind} message again{' changed' if changed else ''}"
                        f" ({'recorded' if listed_ids else 'not recorded'}): {code}"
                        f"{' slow' if took > 1 else ''}"
                    ] += 1
                    if changed and listed_ids:
                        continue  # refused as a reuse, rightly
                    if code != "OK":
                        found.fail(
                            f"round {a.round} {a.kind} ({a.how}, {a.first}): message {message}"
                            f" again{' changed' if changed else ''}: {code} {answer.details()}"
                        )
                        continue
                    tokens.append(answer.consistency_token)
                    if took > BOUND + 2:
                        found.fail(f"round {a.round}: message {message} again took {took:.1f} s")
                    if listed_ids and list(answer.event_ids) != listed_ids:
                        found.fail(
                            f"round {a.round}: message {message} again answered"
                            f" {list(answer.event_ids)}, recorded {listed_ids}"
                        )
            if again and a.kind == "resolve" and not a.retried and a.first != "OK":
                request = api.ResolveRevocationCandidateRequest(
                    request_id=uuid.uuid4().hex, phone=a.phones[0], brand="acme",
                    candidate_event_id=a.candidate,
                    resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                    occurred_at=ts(when - timedelta(minutes=4)),
                )  # fmt: skip
                t0 = time.monotonic()
                code, answer = await unary_long(c.stub, "ResolveRevocationCandidate", request)
                took = time.monotonic() - t0
                found.tally[f"resolve again after give-up: {code}"] += 1
                if code not in ("OK", "FAILED_PRECONDITION") or took > BOUND + 2:
                    found.fail(f"round {a.round}: another resolution: {code} in {took:.1f} s")

    await asyncio.gather(*(later(a) for a in attempts))
    return tokens


async def opt_outs_given_up(
    c: Client,
    attempts: list[Attempt],
    events: dict[str, list[lpb.RecordedEvent]],
    found: Findings,
    token: str,
) -> None:
    for a in attempts:
        if not a.revocation or a.retried or a.first == "OK":
            continue
        phone = a.phones[0]
        revoked = any(
            e.event.WhichOneof("payload") == "consent_revoked" for e in events.get(phone, [])
        )
        for t in ("", "", token):
            try:
                d = await c.CanSend(
                    api.CanSendRequest(
                        phone=phone, brand="acme", campaign="promo", at_least_as_fresh=t
                    ),
                    timeout=20,
                )
            except grpc.aio.AioRpcError as err:
                found.fail(f"round {a.round} {a.kind}: CanSend {err.code().name} {err.details()}")
                continue
            # A revoked resolution given up on leaves its hold if not recorded: denied.
            # Not recorded, the number is as before: allowed, or denied for another
            # reason than an opt-out (quiet hours, on the real clock).
            by_opt_out = d.reason in (api.REASON_REVOKED, api.REASON_REVOKED_BRAND_WIDE)
            bad = d.allowed if a.kind == "resolve" or revoked else by_opt_out
            if t and bad:
                found.fail(
                    f"round {a.round} {a.kind} given up: revoked in ledger={revoked},"
                    f" CanSend allowed={d.allowed} ({api.Reason.Name(d.reason)})"
                )
        found.tally[f"{a.kind} given up: {'recorded' if revoked else 'not recorded'}"] += 1


def _plain(message: Any) -> Any:
    out = json_format.MessageToDict(message)
    out.pop("consistencyToken", None)
    return out


async def answers(c: Client, phones: Sequence[str], token: str, when: datetime) -> dict[Any, Any]:
    """What readers answer about ``phones`` (at ``token``), for comparing."""
    out: dict[Any, Any] = {}
    sem = asyncio.Semaphore(8)

    async def one(p: str) -> None:
        async with sem:
            evs = await listed(c, p, token)
            out[("events", p)] = sorted(e.event.event_id for e in evs)
            d = await c.CanSend(
                api.CanSendRequest(phone=p, brand="acme", campaign="promo", at_least_as_fresh=token)
            )
            out[("CanSend", p)] = (d.allowed, d.reason, sorted(d.evidence_event_ids))
            g = await c.GetConsent(
                api.GetConsentRequest(
                    phone=p, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            out[("GetConsent", p)] = g.state

    await asyncio.gather(*(one(p) for p in phones))
    window = dict(start_time=ts(when - timedelta(days=4)), end_time=ts(when))
    rate = await c.GetOptOutRate(
        api.GetOptOutRateRequest(brand="acme", at_least_as_fresh=token, **window)
    )
    out["rate"] = _plain(rate)
    health = await c.GetCampaignHealth(
        api.GetCampaignHealthRequest(brand="acme", at_least_as_fresh=token, **window)
    )
    out["health"] = _plain(health)
    return out


def counts_agree(
    got: dict[Any, Any],
    events: dict[str, list[lpb.RecordedEvent]],
    found: Findings,
    when: datetime,
) -> None:
    """The opt-out rate and the health's counts against the facts listed."""
    start, end = when - timedelta(days=4), when
    sends, revoked = set(), set()
    for p, evs in events.items():
        for e in evs:
            env = e.event
            at = env.occurred_at.ToDatetime().replace(tzinfo=start.tzinfo)
            if env.brand != "acme" or not (start <= at < end):
                continue
            which = env.WhichOneof("payload")
            if which == "message_sent":
                sends.add((p, env.message_sent.message_id))
            elif which == "consent_revoked":
                revoked.add(p)
    rate = got["rate"]
    health_sent = sum(
        int(h.get("counts", {}).get("messagesSent", 0)) for h in got["health"].get("campaigns", [])
    )
    found.tally[f"rate: sent {rate.get('messagesSent')} opt-outs {rate.get('optOuts')}"] += 1
    found.tally[f"facts: sent {len(sends)} numbers opted out {len(revoked)}"] += 1
    if int(rate.get("messagesSent", 0)) != len(sends) or health_sent != len(sends):
        found.fail(
            f"messages sent: rate {rate.get('messagesSent')}, health {health_sent},"
            f" listed {len(sends)}"
        )
    if int(rate.get("optOuts", 0)) != len(revoked):
        found.fail(f"opt-outs: rate {rate.get('optOuts')}, numbers listed {len(revoked)}")


def report(name: str, found: Findings) -> None:
    print(f"\n== {name} (seed {SEED})")
    for rpc, n in UNAVAILABLE_AGAIN.items():
        print(f"   {n:5d}  UNAVAILABLE, sent again: {rpc}")
    UNAVAILABLE_AGAIN.clear()
    for k, n in sorted(found.tally.items()):
        print(f"   {n:5d}  {k}")
    for w in found.wrong[:60]:
        print("   WRONG", w)
    print(f"   {len(found.wrong)} wrong")


def differences(before: dict[Any, Any], after: dict[Any, Any]) -> list[str]:
    out = []
    for k in sorted(set(before) | set(after), key=str):
        if before.get(k) != after.get(k):
            out.append(f"{k}: {before.get(k)} -> {after.get(k)}")
    return out


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_writes_given_up_on(ledger, tmp_path, postgres_dsn, kafka_bootstrap):
    rng = random.Random(f"{SEED}-{ledger}")
    clock = Clock()
    w = World(clock.now, rng)
    kafka = (
        kafka_settings(kafka_bootstrap, f"cancel-{uuid.uuid4().hex[:8]}.")
        if ledger == "kafka"
        else None
    )
    settings = service_settings(tmp_path, postgres_dsn, kafka=kafka)
    found = Findings()
    kinds, weights = zip(*KINDS.items(), strict=True)
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await defined(
            runtime,
            [
                define("acme", "promo", clock.now - timedelta(days=30), [SENDER]),
                define("initech", "news", clock.now - timedelta(days=30), []),
            ],
        )
        giver = Giver(rng)
        attempts: list[Attempt] = []
        t0 = time.monotonic()

        async def round_(i: int) -> None:
            kind = rng.choices(kinds, weights)[0]
            a = await prepared(c, w, i, kind)
            attempts.append(await play(c, w, giver, a, 0.5))

        for start in range(0, ROUNDS, WIDE):
            await asyncio.gather(*(round_(i) for i in range(start, min(ROUNDS, start + WIDE))))
        print(f"\n{ROUNDS} rounds in {time.monotonic() - t0:.0f} s")
        await asyncio.sleep(2)  # writes whose callers went away, still on their way
        raw, in_ledger, end = await ledger_end(runtime)
        twice = {i: n for i, n in raw.items() if n > 1}
        found.tally[f"event ids held twice in the ledger itself: {len(twice)}"] += 1
        events = await check(c, attempts, end, found, when=clock.now)
        for a in attempts:  # campaign facts: not listed by number
            if a.kind in ("define", "brand_policy"):
                for i in (a.first_ids or []) + (a.retry_ids if a.retry == "OK" else []) or []:
                    if i not in in_ledger:
                        found.fail(f"round {a.round} {a.kind}: acknowledged {i} not in ledger")
                mine = [e for e in in_ledger.values() if e.request_id == a.request.request_id]
                if len(mine) > 1:
                    found.fail(f"round {a.round} {a.kind}: {len(mine)} facts")
        await opt_outs_given_up(c, attempts, events, found, end)
        counts_agree(await answers(c, [], end, clock.now), events, found, clock.now)
        await nothing_stuck(c, attempts, events, found, clock.now)
        await asyncio.sleep(1)
        _, _, end = await ledger_end(runtime)
        phones = sorted(events)
        live = await answers(c, phones, end, clock.now)
    report(f"{ledger}: writes given up on", found)
    for way in ("restarted", "rebuilt"):
        if way == "rebuilt":
            await finished(rebuild(settings))
        async with running(settings, clock) as runtime, client(runtime.address) as c:
            again = await answers(c, phones, end, clock.now)
        changed = differences(live, again)
        print(f"   {way}: {len(changed)} answers changed")
        for line in changed[:20]:
            print("     ", line)
        found.wrong += [f"{way}: {line}" for line in changed]
    assert not found.wrong, f"{len(found.wrong)} wrong; first: {found.wrong[:5]}"


# ---- killed mid-burst ---------------------------------------------------------------


def _env(ledger: str, tmp_path: Path, dsn: str, bootstrap: str, prefix: str) -> dict[str, str]:
    env = {
        "CONSENT_POSTGRES_DSN": dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path),
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
        "CONSENT_PROJECTOR_GROUP": f"cancel-kill-{uuid.uuid4().hex[:8]}",
        "CONSENT_FRESHNESS_WAIT_MS": "5000",
        # A killed import's turns to append wait this long for the next (120 s by default).
        "CONSENT_IMPORT_APPEND_LEASE_S": "10",
    }
    if ledger == "kafka":
        env |= {
            "CONSENT_LEDGER": "kafka",
            "CONSENT_KAFKA_BOOTSTRAP": bootstrap,
            "CONSENT_KAFKA_TOPIC_PREFIX": prefix,
            "CONSENT_KAFKA_PARTITIONS": "4",
            "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
            "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
        }
    else:
        env["CONSENT_LEDGER"] = "postgres"
    return env


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_killed_mid_burst(ledger, tmp_path, postgres_dsn, kafka_bootstrap):
    rng = random.Random(f"{SEED}-kill-{ledger}")
    env = _env(ledger, tmp_path, postgres_dsn, kafka_bootstrap, f"ck-{uuid.uuid4().hex[:8]}.")
    when = now()
    w = World(when, rng)
    found = Findings()
    kinds = ["opt_in", "opt_out", "sent", "batch", "inbound_stop", "hold_place", "import"]
    attempts: list[Attempt] = []
    proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve.log")
    try:
        async with client(address) as c:
            await c.DefineCampaign(define("acme", "promo", when - timedelta(days=30), [SENDER]))
            await asyncio.sleep(1)
        killed = asyncio.Event()

        async def worker() -> None:
            async with client(address) as c:
                giver = Giver(rng)
                for i in range(40):
                    try:
                        a = await prepared(c, w, len(attempts) + 1000 * i, rng.choice(kinds))
                    except (grpc.aio.AioRpcError, AssertionError):
                        if killed.is_set():
                            return
                        raise
                    if killed.is_set():
                        return
                    a.how, a.first, answer = (
                        await giver.stream(c.stub, a.request)
                        if a.kind == "import"
                        else await giver.unary(c.stub, a.rpc, a.request)
                    )
                    if a.first == "OK" and a.kind != "import":
                        a.first_ids = ids_of(answer)
                    attempts.append(a)

        async def kill() -> None:
            while len(attempts) < 60:
                await asyncio.sleep(0.01)
            proc.kill()
            killed.set()

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6)), kill()), 300)
        await asyncio.to_thread(proc.wait)
        proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve-again.log")
        async with client(address) as c:
            for a in attempts:  # half sent again, unchanged
                a.retried = rng.random() < 0.5
                if not a.retried:
                    continue
                if a.kind == "import":
                    a.retry, answers_ = await stream_long(c.stub, a.request)
                    if a.retry == "OK":
                        total = sum(x.imported + x.already_present for x in answers_)
                        refused = sum(len(x.refusals) for x in answers_)
                        a.retry_ids = [f"{total}/{len(a.import_ids)}", f"refused {refused}"]
                else:
                    a.retry, answer = await unary_long(c.stub, a.rpc, a.request)
                    a.retry_ids = ids_of(answer) if a.retry == "OK" else [answer.details()]
            tokens = await nothing_stuck(c, attempts, {}, found, when, again=False)
            token = merged(tokens)
            events = await check(c, attempts, token, found, when=when)
            tokens += await nothing_stuck(c, attempts, events, found, when, later_ones=False)
            token = merged(tokens)
            await opt_outs_given_up(c, attempts, events, found, token)
            phones = sorted(events)
            live = await answers(c, phones, token, when)
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
        proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve-third.log")
        async with client(address) as c:
            again = await answers(c, phones, token, when)
        changed = differences(live, again)
        found.wrong += [f"restarted: {line}" for line in changed]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
    report(f"{ledger}: killed mid-burst ({len(attempts)} writes before the kill)", found)
    assert not found.wrong, f"{len(found.wrong)} wrong; first: {found.wrong[:5]}"


# ---- sends given up on, then corrected ----------------------------------------------


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_sends_given_up_then_corrected(ledger, tmp_path, postgres_dsn, kafka_bootstrap):
    """Single sends and batches cancelled within their first few milliseconds (while the
    view takes their ids), never retried; then each message not recorded is sent again
    corrected (another opt-out language flag) under a new request id: recorded, not
    refused as a reuse of a message never written."""
    rng = random.Random(f"{SEED}-corrected-{ledger}")
    clock = Clock()
    w = World(clock.now, rng)
    kafka = (
        kafka_settings(kafka_bootstrap, f"corr-{uuid.uuid4().hex[:8]}.")
        if ledger == "kafka"
        else None
    )
    settings = service_settings(tmp_path, postgres_dsn, kafka=kafka)
    found = Findings()
    n = int(os.environ.get("CANCEL_SENDS", "200"))
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await defined(runtime, [define("acme", "promo", clock.now - timedelta(days=30), [SENDER])])
        given: list[tuple[str, Any]] = []

        async def one(i: int) -> None:
            if i % 4 == 3:
                request, _ = batch_request(w, rng.choice([1, 3, 10]))
                rpc = "RecordMessagesSent"
            else:
                request = sent(w.single(), "acme", "promo", clock.now - timedelta(hours=1))
                rpc = "RecordMessageSent"
            call = getattr(c.stub, rpc)(request, metadata=METADATA, timeout=30)
            await asyncio.sleep(rng.uniform(0, 0.02))
            call.cancel()
            try:
                await call
                found.tally[f"{rpc} answered before the cancel"] += 1
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                given.append((rpc, request))

        for start in range(0, n, WIDE):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + WIDE))))
        await asyncio.sleep(2)
        _, _, end = await ledger_end(runtime)
        for rpc, request in given:
            messages = (
                [(request.phone, request.message_id, request.occurred_at)]
                if rpc == "RecordMessageSent"
                else [(m.phone, m.message_id, m.occurred_at) for m in request.messages]
            )
            for phone, message, at in messages:
                evs = await listed(c, phone, end)
                recorded = any(
                    e.event.WhichOneof("payload") == "message_sent"
                    and e.event.message_sent.message_id == message
                    for e in evs
                )
                corrected = sent(phone, "acme", "promo", clock.now, message_id=message)
                corrected.occurred_at.CopyFrom(at)
                corrected.included_opt_out_language = False
                code, answer = await unary_long(c.stub, "RecordMessageSent", corrected)
                state = "recorded" if recorded else "not recorded"
                found.tally[f"{rpc} given up, {state}; corrected: {code}"] += 1
                if not recorded and code != "OK":
                    found.fail(
                        f"{rpc} {message} never recorded; corrected: {code} {answer.details()}"
                    )
    report(f"{ledger}: sends given up, then corrected", found)
    assert not found.wrong, f"{len(found.wrong)} wrong; first: {found.wrong[:5]}"
