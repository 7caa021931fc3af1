"""Every kind of write under infrastructure faults, on a broker and a database of the
test's own (the suite's shared ones are never paused or stopped).

While the broker is paused (SIGSTOP) and then killed and started again, or while
PostgreSQL's connections are killed (``pg_terminate_backend``), it is paused and then
restarted, callers keep sending ``RecordMessagesSent`` batches, ``ImportConsents``
streams, opt-outs, inbound STOPs and review-queue resolutions, each retried unchanged
while it is answered UNAVAILABLE, and keep asking ``CanSend`` and ``CanSendBatch``
about the numbers opted out. No check allows a number once its opt-out was
acknowledged; once the store is back, every acknowledged write is in the history
exactly once, a retry of any write (refused or acknowledged) is answered with the
same event ids, never refused as a reused id, and an import run again finds every
record present. ``test_fault_suite.py`` kills the broker, a leader of three and the
service under single writes; ``test_bounded_waits.py`` times the answers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from tests.e2e.harness import (
    Client,
    client,
    define,
    inbound,
    kafka_service_env,
    kafka_settings,
    noon_in_los_angeles,
    now,
    opt_in,
    opt_out,
    sent,
    service_settings,
    streamed,
    ts,
)
from tests.e2e.test_fault_suite import _serve
from tests.infra.kafka_broker import KafkaBroker
from tests.infra.postgres_server import PostgresServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

WHEN = noon_in_los_angeles()
SENDER = "+14155550100"
PASSING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""What a caller retries unchanged: the store was out, or the answer never came."""
REVOKED, DISMISSED = lpb.CANDIDATE_RESOLUTION_REVOKED, lpb.CANDIDATE_RESOLUTION_DISMISSED
Fault = Callable[[Callable[[int], Awaitable[None]]], Awaitable[None]]
"""A fault, given a wait for that many writes to have been answered."""
LEASE_S = 10
"""The killed service's turns to append: they must still hold when it is started
again, so the import run again first waits for them to run out."""


@dataclasses.dataclass
class Answers:
    """What the callers were told, and what went wrong."""

    acked: dict[str, Any] = dataclasses.field(default_factory=dict)
    denied_since: dict[str, str] = dataclasses.field(default_factory=dict)
    """A number that must be denied from now on: why."""
    refused: int = 0
    wrong: list[Any] = dataclasses.field(default_factory=list)
    not_consistent: int = 0

    @property
    def answered(self) -> int:
        return len(self.acked)


async def _until_answered(call: Any, request: Any, answers: Answers, key: str) -> Any:
    """``call(request)``, sent again unchanged while it is refused for a passing
    reason; any other refusal is a defect, noted in ``answers.wrong``."""
    deadline = time.monotonic() + 100
    while True:
        try:
            answer = await call(request, timeout=8)
        except grpc.aio.AioRpcError as err:
            if err.code() not in PASSING:
                answers.wrong.append((key, err.code().name, err.details()))
                return None
            assert time.monotonic() < deadline, f"{key} never answered: {err.details()}"
            answers.refused += 1
            await asyncio.sleep(0.3)
            continue
        answers.acked[key] = answer
        return answer


def _import_messages(phones: list[str]) -> list[api.ImportConsentsRequest]:
    """Opt-ins, and after them in each message opt-outs of some of the same numbers
    (an hour later)."""
    return [
        api.ImportConsentsRequest(
            records=[
                api.ImportRecord(
                    opt_in=opt_in(p, "acme", "promo", WHEN - timedelta(hours=2), f"imp-in-{p}")
                )
                for p in phones[m * 10 : (m + 1) * 10]
            ]
            + [
                api.ImportRecord(
                    opt_out=opt_out(p, "acme", None, WHEN - timedelta(hours=1), f"imp-out-{p}")
                )
                for p in phones[m * 10 : m * 10 + 3]
            ]
        )
        for m in range(len(phones) // 10)
    ]


def _batches(phones: list[str]) -> list[api.RecordMessagesSentRequest]:
    return [
        api.RecordMessagesSentRequest(
            request_id=f"batch-{b}",
            brand="acme",
            messages=[
                api.SentMessage(
                    phone=phones[(b * 7 + k) % len(phones)],
                    campaign="promo",
                    message_id=f"SM-{b}-{k}",
                    occurred_at=ts(WHEN - timedelta(minutes=100 - b)),
                )
                for k in range(12)
            ],
        )
        for b in range(16)
    ]


async def _applied(runtime: Runtime, token: str) -> None:
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token), 60)


async def _history(c: Client, phone: str) -> list[Any]:
    events = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme", page_size=1000))
    assert not events.next_page_token
    return [e.event for e in events.events]


async def _write_through(runtime: Runtime, fault: Fault) -> Answers:
    """The writes and checks of this module's docstring, with ``fault`` under them;
    every check of the outcome once the writes are answered."""
    opted_in = [f"+1415556{1000 + i:04d}" for i in range(40)]
    stops, texts, reviewed, sending = (
        opted_in[:8],
        opted_in[8:14],
        opted_in[14:22],
        opted_in[22:],
    )
    imported = [f"+1415557{2000 + i:04d}" for i in range(60)]
    answers = Answers()
    async with client(runtime.address, "acme-app") as c, client(runtime.address) as admin:
        w = await admin.DefineCampaign(define("acme", "promo", WHEN - timedelta(days=1), [SENDER]))
        await _applied(runtime, w.consistency_token)
        for phone in opted_in:
            w = await c.RecordOptIn(opt_in(phone, "acme", "promo", WHEN - timedelta(hours=3)))
        await _applied(runtime, w.consistency_token)
        candidates = {}
        for phone in reviewed:
            w = await c.HandleInboundMessage(
                inbound(phone, SENDER, "please stop texting me", WHEN - timedelta(hours=2))
            )
            assert w.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE, w
            await _applied(runtime, w.consistency_token)
            consent = await c.GetConsent(
                api.GetConsentRequest(phone=phone, brand="acme", campaign="promo")
            )
            candidates[phone] = consent.pending_revocation_candidates[0].event.event_id
        # Each of the imported numbers with an opt-out is denied from the start: an
        # opt-in recorded without the opt-out after it in its message would allow it.
        answers.denied_since |= {p: "imported opt-out" for p in imported if int(p[-2:]) % 10 < 3}

        writes: dict[str, tuple[Any, Any]] = {}
        for request in _batches(sending):
            writes[request.request_id] = (c.RecordMessagesSent, request)
        for i, phone in enumerate(stops):
            request = opt_out(phone, "acme", None, WHEN - timedelta(minutes=30), f"stop-{i}")
            writes[f"stop-{i}"] = (c.RecordOptOut, request)
        for i, phone in enumerate(texts):
            text = inbound(phone, SENDER, "STOP", WHEN - timedelta(minutes=20), f"text-{i}")
            writes[f"text-{i}"] = (c.HandleInboundMessage, text)
        for i, phone in enumerate(reviewed):
            decision = api.ResolveRevocationCandidateRequest(
                request_id=f"resolve-{i}",
                phone=phone,
                brand="acme",
                candidate_event_id=candidates[phone],
                resolution=(
                    lpb.CANDIDATE_RESOLUTION_REVOKED
                    if i % 2
                    else lpb.CANDIDATE_RESOLUTION_DISMISSED
                ),
                occurred_at=ts(WHEN - timedelta(hours=1)),
                resolved_by="alice",
            )
            writes[f"resolve-{i}"] = (admin.ResolveRevocationCandidate, decision)
        must_deny = {
            **{f"stop-{i}": p for i, p in enumerate(stops)},
            **{f"text-{i}": p for i, p in enumerate(texts)},
            **{f"resolve-{i}": p for i, p in enumerate(reviewed) if i % 2},
        }
        messages = _import_messages(imported)

        async def writer(keys: list[str]) -> None:
            for key in keys:
                call, request = writes[key]
                answer = await _until_answered(call, request, answers, key)
                if answer is not None and key in must_deny:
                    answers.denied_since[must_deny[key]] = key
                await asyncio.sleep(0.2)

        async def importer() -> None:
            for m in range(0, len(messages), 2):
                try:
                    await streamed(c, messages[m : m + 2])
                except grpc.aio.AioRpcError as err:  # run again below, as a caller would
                    if err.code() not in PASSING:
                        answers.wrong.append(("import", err.code().name, err.details()))
                await asyncio.sleep(0.5)

        checking = True

        async def checker() -> None:
            while checking:
                denied = dict(answers.denied_since)
                phones = list(denied)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    batch = await c.CanSendBatch(
                        api.CanSendBatchRequest(brand="acme", campaign="promo", phones=phones),
                        timeout=8,
                    )
                    for phone, d in zip(phones, batch.decisions, strict=True):
                        if d.allowed:
                            answers.wrong.append(("CanSendBatch allowed", phone, denied[phone]))
                        answers.not_consistent += d.reason == api.REASON_NOT_CONSISTENT
                for phone in phones[-4:]:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        one = await c.CanSend(
                            api.CanSendRequest(phone=phone, brand="acme", campaign="promo"),
                            timeout=8,
                        )
                        if one.allowed:
                            answers.wrong.append(("CanSend allowed", phone, denied[phone]))
                        answers.not_consistent += one.reason == api.REASON_NOT_CONSISTENT
                await asyncio.sleep(0.05)

        async def answered(count: int) -> None:
            while answers.answered < count:
                await asyncio.sleep(0.01)

        keys = list(writes)
        checks = asyncio.create_task(checker())
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    writer([k for k in keys if k.startswith("batch")]),
                    writer([k for k in keys if not k.startswith("batch")]),
                    importer(),
                    fault(answered),
                ),
                150,
            )
            # Every write sent again once the store is back: the same answer, nothing new.
            assert not answers.wrong, answers.wrong[:10]
            for key, (call, request) in writes.items():
                first = answers.acked[key]
                again = await call(request, timeout=30)
                assert list(again.event_ids) == list(first.event_ids), key
                await _applied(runtime, again.consistency_token)
        finally:
            checking = False
            await checks
        # Run again: each record imported now or found present (a record refused
        # UNAVAILABLE may have been recorded all the same), none refused.
        for answer in await streamed(c, messages):
            assert not answer.refusals, [(r.index, r.code, r.violations) for r in answer.refusals]
            await _applied(runtime, answer.consistency_token)

        sent = Counter()
        for phone in sending:
            for event in await _history(c, phone):
                if event.event_type == "MessageSent":
                    sent[event.message_sent.message_id] += 1
        batched = [m for k, (_, r) in writes.items() if k.startswith("batch") for m in r.messages]
        assert sent == Counter(m.message_id for m in batched)
        for key, phone in must_deny.items():
            history = await _history(c, phone)
            kinds = Counter(e.event_type for e in history)
            if key.startswith("text"):
                assert kinds["InboundMessageReceived"] == 1, (key, kinds)
            if key.startswith("stop"):
                assert [e.event_id for e in history if e.event_type == "ConsentRevoked"] == list(
                    answers.acked[key].event_ids
                ), key
        for phone in reviewed:
            kinds = Counter(e.event_type for e in await _history(c, phone))
            assert kinds["RevocationCandidateResolved"] == 1, (phone, kinds)
        for phone in imported:
            kinds = Counter(e.event_type for e in await _history(c, phone))
            revoked = 1 if phone in answers.denied_since else 0
            assert (kinds["ConsentGranted"], kinds["ConsentRevoked"]) == (1, revoked), phone
        final = await c.CanSendBatch(
            api.CanSendBatchRequest(brand="acme", campaign="promo", phones=opted_in + imported)
        )
        allowed = {d.phone for d in final.decisions if d.allowed}
        dismissed = {p for i, p in enumerate(reviewed) if not i % 2}
        assert allowed == (set(opted_in + imported) - set(answers.denied_since)), allowed
        assert dismissed <= allowed
    assert not answers.wrong, answers.wrong[:10]
    return answers


def _settings(tmp: Path, dsn: str, bootstrap: str | None) -> Any:
    kafka = kafka_settings(bootstrap, f"wf-{uuid.uuid4().hex[:8]}.") if bootstrap else None
    return dataclasses.replace(
        service_settings(tmp, dsn, kafka=kafka),
        freshness=FreshnessSettings(refresh_interval=0.05, wait_bound=5),
    )


@contextlib.asynccontextmanager
async def _running(tmp: Path, dsn: str, bootstrap: str | None) -> AsyncIterator[Runtime]:
    runtime = Runtime(_settings(tmp, dsn, bootstrap), clock=lambda: WHEN)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def test_writes_through_a_paused_then_killed_broker_are_recorded_once(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    broker = private_kafka_broker

    async def fault(answered: Callable[[int], Awaitable[None]]) -> None:
        await answered(4)
        pid = broker.pid
        assert pid is not None
        _signal([pid], signal.SIGSTOP)
        try:
            await asyncio.sleep(8)
        finally:
            _signal([pid], signal.SIGCONT)
        await answered(16)
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(2)
        await asyncio.to_thread(broker.start)

    async with _running(tmp_path, postgres_dsn, broker.bootstrap_servers) as runtime:
        answers = await _write_through(runtime, fault)
    assert answers.refused and answers.not_consistent, "the faults refused nothing"


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, to pause, restart and cut off: its tests
    take turns with it (each on a database made afresh), as another initdb and
    start would add seconds to each for nothing."""
    folder = Path(tempfile.mkdtemp(prefix="consent-test-write-faults-"))
    server = PostgresServer(folder)
    server.start()
    yield server
    _signal(server.family(), signal.SIGCONT)
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("ledger", ["kafka", "embedded"])
async def test_writes_through_postgres_cut_off_paused_and_restarted_are_recorded_once(
    tmp_path, private_postgres: PostgresServer, kafka_bootstrap, ledger
):
    """On the Kafka ledger the view's database fails; on the embedded default the
    ledger's too."""
    server = private_postgres
    dsn = await server.create_database("faults")

    async def fault(answered: Callable[[int], Awaitable[None]]) -> None:
        await answered(4)
        conn = await asyncpg.connect(server.dsn)
        try:
            began = time.monotonic()
            while time.monotonic() - began < 4:
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = 'faults' AND pid <> pg_backend_pid()"
                )
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        await answered(12)
        family = server.family()
        _signal(family, signal.SIGSTOP)
        try:
            await asyncio.sleep(6)
        finally:
            _signal(family, signal.SIGCONT)
        await answered(20)
        await asyncio.to_thread(server.restart)

    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    async with _running(tmp_path, dsn, bootstrap) as runtime:
        answers = await _write_through(runtime, fault)
    assert answers.refused and answers.not_consistent, "the faults refused nothing"


async def test_writes_cut_off_by_a_killed_service_are_recorded_once_when_sent_again(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """The service SIGKILLed while batches and an import stream are under way: started
    again, every batch sent again is answered with the event ids of its first answer
    (or recorded now, if it had none), and the import run again finds each record it
    acknowledged present and imports the rest, once the dead import's turns to append
    run out (``CONSENT_IMPORT_APPEND_LEASE_S``, shortened here: two minutes would be
    waited out whole; this test's appends are to a local broker, far within it)."""
    env = kafka_service_env(
        tmp_path, postgres_dsn, kafka_bootstrap, "wf-kill",
        CONSENT_FRESHNESS_WAIT_MS="10000", CONSENT_IMPORT_APPEND_LEASE_S=str(LEASE_S),
    )  # fmt: skip
    when = now()  # the service's own clock
    phones = [f"+1415558{3000 + i:04d}" for i in range(40)]
    batches = [
        api.RecordMessagesSentRequest(
            request_id=f"kill-batch-{b}",
            brand="acme",
            messages=[
                api.SentMessage(
                    phone=phones[(b * 3 + k) % len(phones)],
                    campaign="promo",
                    message_id=f"KSM-{b}-{k}",
                    occurred_at=ts(when - timedelta(minutes=5)),
                )
                for k in range(20)
            ],
        )
        for b in range(30)
    ]
    imported = [f"+1415559{4000 + i:04d}" for i in range(200)]
    messages = [
        api.ImportConsentsRequest(
            records=[
                api.ImportRecord(
                    opt_in=opt_in(p, "acme", "promo", when - timedelta(hours=2), f"kill-in-{p}")
                )
                for p in imported[m * 20 : (m + 1) * 20]
            ]
        )
        for m in range(10)
    ]
    acked: dict[str, Any] = {}
    import_answers: list[api.ImportConsentsResponse] = []
    proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve.log")
    try:
        async with client(address) as admin:
            await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
        killed = asyncio.Event()

        async def sender(mine: list[api.RecordMessagesSentRequest]) -> None:
            async with client(address) as c:
                for request in mine:
                    try:
                        acked[request.request_id] = await c.RecordMessagesSent(request, timeout=15)
                    except grpc.aio.AioRpcError:
                        if killed.is_set():
                            return
                        raise

        async def importer() -> None:
            async with client(address) as c:
                stream = c.stub.ImportConsents(
                    _paced(messages), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
                )
                try:
                    async for answer in stream:
                        import_answers.append(answer)
                except grpc.aio.AioRpcError:
                    if not killed.is_set():
                        raise

        async def kill_midway() -> None:
            while len(acked) < 6 or len(import_answers) < 3:
                await asyncio.sleep(0.01)
            proc.kill()
            killed.set()

        await asyncio.wait_for(
            asyncio.gather(*(sender(batches[i::3]) for i in range(3)), importer(), kill_midway()),
            90,
        )
        await asyncio.to_thread(proc.wait)
        assert len(acked) < len(batches) and len(import_answers) < len(messages), "killed late"

        proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve-again.log")
        async with client(address) as c:
            for request in batches:
                again = await c.RecordMessagesSent(request, timeout=30)
                if request.request_id in acked:
                    assert again.event_ids == acked[request.request_id].event_ids
            # Run again until the dead import's turns ran out: each record acknowledged
            # before is present, the others imported now, none refused for good.
            deadline = time.monotonic() + 150
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    rerun = await streamed(c, messages)
                    if not any(a.refusals for a in rerun):
                        break
                assert time.monotonic() < deadline, "the import never completed"
                await asyncio.sleep(2)
            present = sum(a.already_present for a in rerun)
            assert present >= sum(a.imported for a in import_answers)
            for answer in rerun:
                assert answer.imported + answer.already_present == 20
            sent = Counter()
            for phone in phones:
                for event in await _history(c, phone):
                    if event.event_type == "MessageSent":
                        sent[event.message_sent.message_id] += 1
            assert sent == Counter(m.message_id for b in batches for m in b.messages)
            for phone in imported:
                kinds = Counter(e.event_type for e in await _history(c, phone))
                assert kinds == Counter({"ConsentGranted": 1}), phone
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


async def _paced(
    messages: list[api.ImportConsentsRequest],
) -> AsyncIterator[api.ImportConsentsRequest]:
    for message in messages:
        yield message
        await asyncio.sleep(0.05)


def two_sends(
    request_id: str, opt_out_language: bool, *, phones: list[str], ids: list[str], when: datetime
) -> api.RecordMessagesSentRequest:
    """A batch of the messages ``ids[1]`` and ``ids[2]`` to ``phones[1]`` and
    ``phones[2]``, sent five minutes before ``when``."""
    return api.RecordMessagesSentRequest(
        request_id=request_id,
        brand="acme",
        messages=[
            api.SentMessage(
                phone=phones[i],
                campaign="promo",
                message_id=ids[i],
                occurred_at=ts(when - timedelta(minutes=5)),
                included_opt_out_language=opt_out_language,
            )
            for i in (1, 2)
        ],
    )


def corrected(request: api.RecordMessageSentRequest) -> api.RecordMessageSentRequest:
    """``request`` sent again under a new request id, saying something else of it."""
    again = api.RecordMessageSentRequest()
    again.CopyFrom(request)
    again.request_id = uuid.uuid4().hex
    again.included_opt_out_language = not request.included_opt_out_language
    return again


async def test_a_message_whose_send_died_before_its_append_is_recorded_once_its_claim_lapses(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    """A send and a batch claim their message ids in PostgreSQL while the broker is
    paused, so their appends hang; the service is SIGKILLed, the broker killed (what
    it was sent never read) and both started again. Those claims named sends never
    written, and the messages sent again corrected under new request ids were refused
    ALREADY_EXISTS for ever. Now they are refused only until the claims lapse (the
    ledger's longest append and the freshness bound: the reason says when), then
    recorded, each message once, and the dead request's own retry is refused."""
    broker = private_kafka_broker
    env = kafka_service_env(
        tmp_path, postgres_dsn, broker.bootstrap_servers, "wf-dead",
        CONSENT_FRESHNESS_WAIT_MS="2000",
        # Short, so that the claims lapse within the test: 70 s and 141 s by default.
        # Long enough that the broker and the service start again well inside it
        # under load (two test workers), where 4 s of append left too little.
        CONSENT_KAFKA_APPEND_TIMEOUT_MS="10000", CONSENT_KAFKA_REQUEST_TIMEOUT_MS="3000",
    )  # fmt: skip
    # Twice the ledger's append and request timeouts and the freshness bound.
    lapse = 2 * (10 + 3 + 2)
    when = now()
    phones = [f"+1415557{7000 + i:04d}" for i in range(3)]
    tag = uuid.uuid4().hex[:8]
    ids = [f"DEAD-{tag}-{i}" for i in range(3)]
    single = sent(phones[0], "acme", "promo", when - timedelta(minutes=5), message_id=ids[0])

    batch = partial(two_sends, phones=phones, ids=ids, when=when)

    dead_batch = batch(f"dead-{tag}", True)
    proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve.log")
    try:
        async with client(address) as admin:
            defined = await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            await admin.CanSend(
                api.CanSendRequest(
                    phone=phones[0],
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=defined.consistency_token,
                )
            )
            pid = broker.pid
            assert pid is not None
            _signal([pid], signal.SIGSTOP)
            try:
                for call, request in (
                    (admin.RecordMessageSent, single),
                    (admin.RecordMessagesSent, dead_batch),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as hung:
                        await call(request, timeout=3)
                    assert hung.value.code() in PASSING
                claimed_at = time.monotonic()
                db = await asyncpg.connect(postgres_dsn)
                try:
                    claims = await db.fetchval(
                        "SELECT count(*) FROM message_claim WHERE message_id = ANY($1)", ids
                    )
                finally:
                    await db.close()
                assert claims == 3, "the sends did not claim their message ids"
                proc.kill()
                await asyncio.to_thread(proc.wait)
                await asyncio.to_thread(broker.kill)  # what it was sent is never read
            finally:
                _signal([pid], signal.SIGCONT)
        await asyncio.to_thread(broker.start)
        proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve-again.log")
        async with client(address) as c:
            for call, request in (
                (c.RecordMessageSent, corrected(single)),
                (c.RecordMessagesSent, batch(uuid.uuid4().hex, False)),
            ):
                # UNAVAILABLE (the view not caught up with the restarted broker within
                # the freshness bound, seen under load) says try again; the claims
                # must still be young when the answer comes.
                while True:
                    with pytest.raises(grpc.aio.AioRpcError) as young:
                        await call(request, timeout=30)
                    if young.value.code() != grpc.StatusCode.UNAVAILABLE:
                        break
                    assert time.monotonic() < claimed_at + lapse - 4, young.value.details()
                    await asyncio.sleep(0.2)
                assert young.value.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "lapses in" in (young.value.details() or "")

            await asyncio.sleep(claimed_at + lapse + 1 - time.monotonic())
            one = await c.RecordMessageSent(corrected(single), timeout=30)
            many = await c.RecordMessagesSent(batch(uuid.uuid4().hex, False), timeout=30)
            for call, request in (
                (c.RecordMessageSent, single),
                (c.RecordMessagesSent, dead_batch),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as dead_retry:
                    await call(request, timeout=30)
                assert dead_retry.value.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "recorded before" in (dead_retry.value.details() or "")
            tokens = [one.consistency_token, many.consistency_token, many.consistency_token]
            for phone, message_id, token in zip(phones, ids, tokens, strict=True):
                listed = await c.ListEvents(
                    api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=token)
                )
                sends = [
                    (
                        e.event.message_sent.message_id,
                        e.event.message_sent.included_opt_out_language,
                    )
                    for e in listed.events
                    if e.event.WhichOneof("payload") == "message_sent"
                ]
                assert sends == [(message_id, False)]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
