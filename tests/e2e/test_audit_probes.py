"""The audit API as an outside checker pokes it, on the real Kafka ledger and
PostgreSQL: every malformed field of every audit RPC is INVALID_ARGUMENT naming
the field (an unknown campaign NOT_FOUND), a token of one brand reaches no other
brand through any of them, and a refused call writes nothing to the ledger and
leaves only its refusal in the access log (an unknown campaign: the read that
found it missing)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    opt_in,
    opt_out,
    ts,
)

PHONE = "+14155552971"  # acme's and globex's: opted in to both, then out of acme's
SENDER = "+12125550197"
HUGE = "x" * 100_000


def _now() -> datetime:
    return datetime.now(UTC)


def _bad_ts() -> Timestamp:
    """A timestamp before year 1: no moment at all."""
    return Timestamp(seconds=-62_135_596_801)


@dataclass(frozen=True)
class Probe:
    """An audit call as a checker makes it, and what it must answer: ``code`` and,
    for INVALID_ARGUMENT, the ``field`` named."""

    rpc: str
    request: Callable[[], Any]
    code: grpc.StatusCode
    field: str = ""
    who: str = "acme-app"
    admitted: bool = False
    """Whether the read is admitted (and recorded so) before it is refused: what it
    is refused for is found by reading (the ledger's end, a campaign's definition)."""

    @property
    def name(self) -> str:
        return f"{self.rpc}:{self.who}:{self.field or self.code.name}"


INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _window(**fields: Any) -> dict[str, Any]:
    return {
        "start_time": ts(_now() - timedelta(days=1)),
        "end_time": ts(_now() + timedelta(minutes=1)),
        **fields,
    }


def _malformed() -> list[Probe]:
    """Each audit RPC with each of its fields malformed in turn, by acme's own token."""
    p = []
    for rpc, make, has_campaign in (
        ("GetConsent", api.GetConsentRequest, True),
        ("GetProofPacket", api.GetProofPacketRequest, False),
        ("ListEvents", api.ListEventsRequest, False),
    ):
        base = {"phone": PHONE, "brand": "acme"}
        if has_campaign:
            base["campaign"] = "promo"

        def request(make: Any = make, base: dict[str, Any] = base, **fields: Any) -> Callable:
            return lambda: make(**{**base, **fields})

        p += [
            Probe(rpc, request(brand=""), INVALID, "brand"),
            Probe(rpc, request(brand="ACME!"), INVALID, "brand"),
            Probe(rpc, request(brand=HUGE), INVALID, "brand"),
            Probe(rpc, request(phone=""), INVALID, "phone"),
            Probe(rpc, request(phone="12"), INVALID, "phone"),
            Probe(rpc, request(phone="+1415555297"), INVALID, "phone"),
            Probe(rpc, request(phone=HUGE), INVALID, "phone"),
            Probe(rpc, request(at_least_as_fresh="nope"), INVALID, "at_least_as_fresh"),
            # Well-formed, but of no write of this ledger: past its end, or of a
            # partition it lacks.
            Probe(rpc, request(at_least_as_fresh="subscribers:0:999999"), INVALID,
                  "at_least_as_fresh", admitted=True),
            Probe(rpc, request(at_least_as_fresh="subscribers:99:1"), INVALID,
                  "at_least_as_fresh", admitted=True),
        ]  # fmt: skip
        if rpc != "ListEvents":
            p += [
                Probe(rpc, request(campaign="Promo!"), INVALID, "campaign"),
                Probe(rpc, request(campaign=HUGE), INVALID, "campaign"),
                Probe(rpc, request(campaign="nope"), NOT_FOUND, "campaign"),
            ]
    p += [
        Probe("GetConsent", lambda: api.GetConsentRequest(phone=PHONE, brand="acme"), INVALID,
              "campaign"),
        Probe("GetProofPacket",
              lambda: api.GetProofPacketRequest(phone=PHONE, brand="acme", format=99),
              INVALID, "format"),
        Probe("ListEvents", lambda: api.ListEventsRequest(phone=PHONE, brand="acme",
                                                          page_size=-1), INVALID, "page_size"),
        Probe("ListEvents", lambda: api.ListEventsRequest(phone=PHONE, brand="acme",
                                                          page_token="zz"), INVALID, "page_token"),
        Probe("ListEvents", lambda: api.ListEventsRequest(phone=PHONE), INVALID, "brand"),
    ]  # fmt: skip

    def as_of(**fields: Any) -> Callable[[], Any]:
        base = {"phone": PHONE, "brand": "acme", "campaign": "promo",
                "at": ts(_now() - timedelta(minutes=1))}  # fmt: skip
        return lambda: api.CanSendAsOfRequest(**{**base, **fields})

    p += [
        Probe("CanSendAsOf", as_of(brand=""), INVALID, "brand"),
        Probe("CanSendAsOf", as_of(brand=HUGE), INVALID, "brand"),
        Probe("CanSendAsOf", as_of(phone="12"), INVALID, "phone"),
        Probe("CanSendAsOf", as_of(phone=""), INVALID, "phone"),
        Probe("CanSendAsOf", as_of(campaign=""), INVALID, "campaign"),
        Probe("CanSendAsOf", lambda: api.CanSendAsOfRequest(phone=PHONE, brand="acme",
                                                            campaign="promo"), INVALID, "at"),
        Probe("CanSendAsOf", as_of(at=_bad_ts()), INVALID, "at"),
        Probe("CanSendAsOf", as_of(known_at=_bad_ts()), INVALID, "known_at"),
        Probe("CanSendAsOf", as_of(message_kind=99), INVALID, "message_kind"),
    ]  # fmt: skip

    for rpc, make in (
        ("GetCampaignHealth", api.GetCampaignHealthRequest),
        ("StreamCampaignHealth", api.StreamCampaignHealthRequest),
        ("GetOptOutRate", api.GetOptOutRateRequest),
    ):

        def window(make: Any = make, **fields: Any) -> Callable[[], Any]:
            return lambda: make(**{"brand": "acme", "campaign": "promo", **fields})

        now = _now()
        p += [
            Probe(rpc, window(brand=""), INVALID, "brand"),
            Probe(rpc, window(brand=HUGE), INVALID, "brand"),
            Probe(rpc, window(campaign="Promo!"), INVALID, "campaign"),
            Probe(rpc, window(campaign="nope"), NOT_FOUND, "campaign"),
            Probe(rpc, window(start_time=ts(now), end_time=ts(now - timedelta(days=1))),
                  INVALID, "start_time"),
            Probe(rpc, window(start_time=ts(now - timedelta(hours=1)),
                              end_time=ts(now - timedelta(hours=1))), INVALID, "start_time"),
            Probe(rpc, window(start_time=_bad_ts()), INVALID, "start_time"),
            Probe(rpc, window(end_time=_bad_ts()), INVALID, "end_time"),
            Probe(rpc, window(at_least_as_fresh="nope"), INVALID, "at_least_as_fresh"),
        ]  # fmt: skip

    def streamed(**fields: Any) -> Callable[[], Any]:
        return lambda: api.StreamCampaignHealthRequest(brand="acme", **fields)

    p += [
        Probe("StreamCampaignHealth", streamed(resume_read_at="nope"), INVALID,
              "resume_read_at"),
        Probe("StreamCampaignHealth", streamed(resume_partitions_done=[0]), INVALID,
              "resume_partitions_done"),
        Probe("StreamCampaignHealth", streamed(resume_read_at="subscribers:0:1",
                                               resume_partitions_done=[7]), INVALID,
              "resume_partitions_done"),
    ]  # fmt: skip

    def sweep(**fields: Any) -> Callable[[], Any]:
        return lambda: api.SweepCampaignRequest(**{"brand": "acme", "campaign": "promo",
                                                   **_window(), **fields})  # fmt: skip

    now = _now()
    p += [
        Probe("SweepCampaign", sweep(brand=""), INVALID, "brand"),
        Probe("SweepCampaign", sweep(brand=HUGE), INVALID, "brand"),
        Probe("SweepCampaign", sweep(campaign=""), INVALID, "campaign"),
        Probe("SweepCampaign", sweep(campaign="nope"), NOT_FOUND, "campaign"),
        Probe("SweepCampaign", lambda: api.SweepCampaignRequest(brand="acme", campaign="promo"),
              INVALID, "start_time"),
        Probe("SweepCampaign", sweep(start_time=ts(now), end_time=ts(now - timedelta(days=1))),
              INVALID, "start_time"),
        Probe("SweepCampaign", sweep(start_time=_bad_ts()), INVALID, "start_time"),
        Probe("SweepCampaign", sweep(resume_read_at="nope"), INVALID, "resume_read_at"),
        Probe("SweepCampaign", sweep(resume_partitions_done=[0]), INVALID,
              "resume_partitions_done"),
        Probe("SweepCampaign", sweep(resume_read_at="subscribers:0:1",
                                     resume_partitions_done=[-1]), INVALID,
              "resume_partitions_done"),
        Probe("ListRevocationCandidates",
              lambda: api.ListRevocationCandidatesRequest(brand=""), INVALID, "brand"),
        Probe("ListRevocationCandidates",
              lambda: api.ListRevocationCandidatesRequest(brand="acme", page_size=-5),
              INVALID, "page_size"),
        Probe("ListRevocationCandidates",
              lambda: api.ListRevocationCandidatesRequest(brand="acme", page_token="zz"),
              INVALID, "page_token"),
        Probe("WatchConsentChanges", lambda: api.WatchConsentChangesRequest(brand=""),
              INVALID, "brand"),
        Probe("WatchConsentChanges",
              lambda: api.WatchConsentChangesRequest(brand="acme", resume_token="nope"),
              INVALID, "resume_token"),
        Probe("WatchConsentChanges",
              lambda: api.WatchConsentChangesRequest(brand="acme", campaign="Promo!"),
              INVALID, "campaign"),
        Probe("WatchConsentChanges",
              lambda: api.WatchConsentChangesRequest(brand="acme", campaign="nope"),
              NOT_FOUND, "campaign"),
        Probe("WatchConsentChanges",
              lambda: api.WatchConsentChangesRequest(brand="acme", from_now=True,
                                                     resume_token="subscribers:0:1"),
              INVALID, "from_now"),
        Probe("CanSendAsOf", as_of(at=Timestamp(seconds=0, nanos=-1)), INVALID, "at"),
        Probe("ListAuditAccess", lambda: api.ListAuditAccessRequest(brand="ACME!"),
              INVALID, "brand"),
        Probe("ListAuditAccess", lambda: api.ListAuditAccessRequest(brand="acme", phone="12"),
              INVALID, "phone"),
        Probe("ListAuditAccess", lambda: api.ListAuditAccessRequest(brand="acme",
                                                                    page_size=-1),
              INVALID, "page_size"),
        Probe("ListAuditAccess", lambda: api.ListAuditAccessRequest(
            brand="acme", start_time=ts(now), end_time=ts(now - timedelta(days=1))),
              INVALID, "start_time"),
        Probe("ListAuditAccess", lambda: api.ListAuditAccessRequest(brand="acme",
                                                                    subject=HUGE),
              INVALID, "subject"),
    ]  # fmt: skip
    return p


def _cross_brand() -> list[Probe]:
    """Every audit RPC asked about acme by globex's token (and by acme's token without
    the audit scope): refused, whatever else the request holds."""
    at = ts(_now() - timedelta(minutes=1))
    requests: dict[str, Callable[[], Any]] = {
        "GetConsent": lambda: api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo"),
        "ListEvents": lambda: api.ListEventsRequest(phone=PHONE, brand="acme"),
        "CanSendAsOf": lambda: api.CanSendAsOfRequest(
            phone=PHONE, brand="acme", campaign="promo", at=at
        ),
        "GetOptOutRate": lambda: api.GetOptOutRateRequest(brand="acme"),
        "GetCampaignHealth": lambda: api.GetCampaignHealthRequest(brand="acme"),
        "StreamCampaignHealth": lambda: api.StreamCampaignHealthRequest(brand="acme"),
        "ListRevocationCandidates": lambda: api.ListRevocationCandidatesRequest(brand="acme"),
        "WatchConsentChanges": lambda: api.WatchConsentChangesRequest(brand="acme"),
        "SweepCampaign": lambda: api.SweepCampaignRequest(
            brand="acme", campaign="promo", **_window()
        ),
        "GetProofPacket": lambda: api.GetProofPacketRequest(phone=PHONE, brand="acme"),
        "ListAuditAccess": lambda: api.ListAuditAccessRequest(brand="acme"),
        # A listing of every brand is for a token of every brand alone.
        "ListAuditAccess ": lambda: api.ListAuditAccessRequest(),
        "ListRevocationCandidates ": lambda: api.ListRevocationCandidatesRequest(brand="*"),
    }
    probes = [
        Probe(rpc.strip(), make, DENIED, who=who)
        for rpc, make in requests.items()
        for who in ("globex-app", "acme-checker")
    ]
    # Bad input about another brand is that brand's business: refused as denied,
    # so that it tells the caller nothing of what would have been read.
    probes.append(
        Probe(
            "GetProofPacket",
            lambda: api.GetProofPacketRequest(phone="12", brand="acme"),
            DENIED,
            who="globex-app",
        )
    )
    return probes


def _retention() -> list[Probe]:
    """Erasure and legal holds, as a checker pokes them: another brand's token and a
    token without the scope are denied, every malformed field refused by name, and
    nothing of it written."""

    def erase(**fields: Any) -> Callable[[], Any]:
        base = {"request_id": uuid.uuid4().hex, "phone": PHONE, "brand": "acme",
                "reference": "DSR-1"}  # fmt: skip
        return lambda: api.RequestErasureRequest(**{**base, **fields})

    def hold(**fields: Any) -> Callable[[], Any]:
        base = {"request_id": uuid.uuid4().hex, "phone": PHONE, "brand": "acme",
                "hold_id": "smith-v-acme", "reason": "Smith v. Acme"}  # fmt: skip
        return lambda: api.PlaceLegalHoldRequest(**{**base, **fields})

    def release(**fields: Any) -> Callable[[], Any]:
        base = {"request_id": uuid.uuid4().hex, "phone": PHONE, "brand": "acme",
                "hold_id": "smith-v-acme"}  # fmt: skip
        return lambda: api.ReleaseLegalHoldRequest(**{**base, **fields})

    return [
        Probe("RequestErasure", erase(), DENIED, who="globex-admin"),
        Probe("RequestErasure", erase(), DENIED, who="acme-app"),  # no admin scope
        Probe("PlaceLegalHold", hold(), DENIED, who="globex-app"),
        Probe("PlaceLegalHold", hold(), DENIED, who="acme-checker"),
        Probe("ReleaseLegalHold", release(), DENIED, who="globex-admin"),
        Probe("RequestErasure", erase(phone="12"), INVALID, "phone", who="admin"),
        Probe("RequestErasure", erase(phone=HUGE), INVALID, "phone", who="admin"),
        Probe("RequestErasure", erase(brand=""), INVALID, "brand", who="admin"),
        Probe("RequestErasure", erase(brand=""), INVALID, "brand", who="globex-admin"),
        Probe("RequestErasure", erase(request_id=""), INVALID, "request_id", who="admin"),
        Probe("RequestErasure", erase(reference=HUGE), INVALID, "reference", who="admin"),
        Probe("PlaceLegalHold", hold(hold_id=""), INVALID, "hold_id"),
        Probe("PlaceLegalHold", hold(hold_id=HUGE), INVALID, "hold_id"),
        Probe("PlaceLegalHold", hold(reason=HUGE), INVALID, "reason"),
        Probe("PlaceLegalHold", hold(phone="12"), INVALID, "phone"),
        Probe("PlaceLegalHold", hold(brand="ACME!"), INVALID, "brand"),
        Probe("ReleaseLegalHold", release(hold_id=""), INVALID, "hold_id", who="admin"),
        Probe("ReleaseLegalHold", release(phone="12"), INVALID, "phone", who="admin"),
        # A hold that does not stand cannot be released, so a typo cannot pass for one.
        Probe("ReleaseLegalHold", release(hold_id="nope"), grpc.StatusCode.FAILED_PRECONDITION,
              who="admin"),
        # Inside the retention period: refused, with the date it becomes possible.
        Probe("RequestErasure", erase(), grpc.StatusCode.FAILED_PRECONDITION, who="admin"),
    ]  # fmt: skip


@pytest.fixture
async def service(serve) -> Runtime:
    at = _now() - timedelta(hours=2)
    senders = {"acme": SENDER, "globex": "+12125550198"}
    campaigns = [define(brand, "promo", at, [sender]) for brand, sender in senders.items()]
    runtime = await serve(name="probes", campaigns=campaigns, console_listen="127.0.0.1:0")
    async with client(runtime.address) as admin:
        for brand in senders:
            await admin.RecordOptIn(opt_in(PHONE, brand, "promo", at))
        w = await admin.RecordOptOut(opt_out(PHONE, "acme", "promo", at + timedelta(hours=1)))
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token), 60)
    return runtime


async def _call(
    channel: grpc.aio.Channel, probe: Probe, request_id: str
) -> tuple[grpc.StatusCode, Any]:
    """The probe's status and its error (None when it was answered). A stream is
    read to its first message, or, for a change stream that has none, a moment."""
    metadata = [("authorization", f"Bearer {TOKENS[probe.who][0]}"), ("x-request-id", request_id)]
    method = getattr(api_grpc.ConsentServiceStub(channel), probe.rpc)
    call = method(probe.request(), metadata=metadata, timeout=60)
    try:
        if probe.rpc == "WatchConsentChanges":
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read}, timeout=3)
            if not done:
                call.cancel()
                return grpc.StatusCode.OK, None
            await read
            return grpc.StatusCode.OK, None
        if probe.rpc in ("SweepCampaign", "StreamCampaignHealth"):
            async for _ in call:
                pass
            return grpc.StatusCode.OK, None
        await call
        return grpc.StatusCode.OK, None
    except grpc.aio.AioRpcError as err:
        return err.code(), err


def _fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields an error names: its BadRequest's, else its ResourceInfo's or
    ErrorInfo's ``field``."""
    status = rpc_status.from_call(err)
    found = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(bad):
            found += [v.field for v in bad.field_violations]
        elif detail.Unpack(info) and "field" in info.metadata:
            found.append(info.metadata["field"])
    return found


async def _ledger_ends(runtime: Runtime) -> dict[int, int]:
    """Where the subscribers' stream ends, as the view has applied it."""
    from ledger.ports import Stream

    return dict(await runtime.view.positions(Stream.SUBSCRIBERS))


async def _admitted(conn: asyncpg.Connection, request_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM audit_access WHERE request_id = $1 AND outcome = 'admitted'",
        request_id,
    )


async def _judge(service: Runtime, dsn: str, probes: list[Probe]) -> list[str]:
    """What each probe got wrong; empty when every one was answered as it must be.
    The probes go a few at once, on one channel: a token past the ledger's end is
    refused only once the freshness bound has passed (5 s here), and one after
    another those probes alone took half a minute."""
    before = await _ledger_ends(service)
    room = asyncio.Semaphore(8)
    async with grpc.aio.insecure_channel(service.address) as channel:

        async def sent(probe: Probe) -> tuple[str, tuple[grpc.StatusCode, Any]]:
            rid = f"probe-{uuid.uuid4().hex[:10]}"
            async with room:
                return rid, await _call(channel, probe, rid)

        answered = await asyncio.gather(*(sent(probe) for probe in probes))
    wrong = []
    conn = await asyncpg.connect(dsn)
    try:
        for probe, (rid, (code, err)) in zip(probes, answered, strict=True):
            if code != probe.code:
                detail = err.details()[:200] if err is not None else ""
                wrong.append(f"{probe.name}: {code.name} ({detail})")
                continue
            if probe.field and probe.field not in _fields(err):
                wrong.append(f"{probe.name}: named {_fields(err)} ({err.details()[:200]})")
            # A campaign never defined is found so by a read, admitted and recorded.
            if probe.code is not NOT_FOUND and not probe.admitted and await _admitted(conn, rid):
                wrong.append(f"{probe.name}: refused, yet recorded as an admitted read")
    finally:
        await conn.close()
    if await _ledger_ends(service) != before:
        wrong.append("a refused call wrote to the ledger")
    return wrong


async def test_every_malformed_field_of_every_audit_rpc_is_refused_by_name(
    service: Runtime, postgres_dsn: str
) -> None:
    wrong = await _judge(service, postgres_dsn, _malformed())
    assert not wrong, "\n".join(wrong)


async def test_no_audit_rpc_lets_one_brands_token_see_another_brand(
    service: Runtime, postgres_dsn: str
) -> None:
    wrong = await _judge(service, postgres_dsn, _cross_brand())
    assert not wrong, "\n".join(wrong)


async def test_erasure_and_holds_refuse_other_brands_and_bad_input_and_write_nothing(
    service: Runtime, postgres_dsn: str
) -> None:
    wrong = await _judge(service, postgres_dsn, _retention())
    assert not wrong, "\n".join(wrong)


async def _console_login(http: aiohttp.ClientSession, base: str, who: str) -> None:
    form = await (await http.get(f"{base}/login")).text()
    match = re.search(r'name="nonce" value="([^"]+)"', form)
    assert match is not None, form
    logged = await http.post(
        f"{base}/login",
        data={"nonce": match.group(1), "token": TOKENS[who][0]},
        headers={"Origin": base},
        allow_redirects=False,
    )
    assert logged.status == 303, await logged.text()


async def test_the_console_refuses_another_brand_and_records_each_refusal(
    service: Runtime, postgres_dsn: str
) -> None:
    base = f"http://{service.console_address}"
    asked = {
        f"/number?phone=%2B{PHONE[1:]}&brand=acme": 403,
        f"/packet?phone=%2B{PHONE[1:]}&brand=acme&format=pdf": 403,
        f"/packet?phone=%2B{PHONE[1:]}&brand=acme&format=json": 403,
        "/review?brand=acme": 403,
        "/number?phone=12&brand=globex": 400,
    }
    before = await _ledger_ends(service)
    # unsafe: keep the cookies of a site at an IP address (the console's, here)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await _console_login(http, base, "globex-app")
        for path, status in asked.items():
            page = await http.get(base + path, allow_redirects=False)
            body = await page.text()
            assert page.status == status, (path, body[:300])
            assert "Ada" not in body  # nothing of acme's subscriber is shown
        # Looked up without a brand, the number shows globex's records alone.
        page = await http.get(f"{base}/number?phone=%2B{PHONE[1:]}", allow_redirects=False)
        assert page.status == 200
        assert "acme" not in (await page.text()).replace("acme-", "")
    assert await _ledger_ends(service) == before
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT action, brand, outcome, refusal_code FROM audit_access"
            " WHERE via = 'console' AND subject = 'globex-app' AND outcome = 'refused'"
            " ORDER BY id"
        )
    finally:
        await conn.close()
    assert [(r["action"], r["brand"], r["refusal_code"]) for r in rows] == [
        ("GET /number", "acme", "PERMISSION_DENIED"),
        ("GET /packet", "acme", "PERMISSION_DENIED"),
        ("GET /packet", "acme", "PERMISSION_DENIED"),
        ("GET /review", "acme", "PERMISSION_DENIED"),
        ("GET /number", "globex", "INVALID_ARGUMENT"),
    ]


async def test_the_packet_is_whole_after_the_opt_out_and_for_its_own_brand_only(
    service: Runtime,
) -> None:
    async with client(service.address, "acme-app") as acme:
        answer = await acme.GetProofPacket(
            api.GetProofPacketRequest(phone=PHONE, brand="acme", format=api.PACKET_FORMAT_JSON)
        )
    packet = json.loads(answer.document)
    assert (packet["phone"], packet["brand"]) == (PHONE, "acme")
    assert [o["campaign"] for o in packet["opt_ins"]] == ["promo"]
    assert [o["kind"] for o in packet["opt_outs"]] == ["revocation"]
    # globex's opt-in of the same number is globex's: not in acme's packet.
    async with client(service.address, "globex-app") as globex:
        theirs = await globex.ListEvents(api.ListEventsRequest(phone=PHONE, brand="globex"))
    assert theirs.events and all(e.event.event_id for e in theirs.events)
    assert not {e.event.event_id for e in theirs.events} & {e["event_id"] for e in packet["events"]}


async def test_a_page_token_of_one_listing_is_refused_for_another(service: Runtime) -> None:
    """ListEvents' next page token of one number and brand, sent with another number
    or brand: it was read as a bare offset into the other listing, and its pages
    came back short or empty, an incomplete history with no error. A page token
    pages through the listing that issued it only (a number spelt otherwise is
    the same listing)."""
    other = "+14155552972"
    async with client(service.address) as admin:
        w = await admin.RecordOptIn(opt_in(other, "acme", "promo", _now() - timedelta(hours=1)))
        fresh = w.consistency_token
        first = await admin.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", page_size=1, at_least_as_fresh=fresh)
        )
        assert first.next_page_token
        spelt = await admin.ListEvents(
            api.ListEventsRequest(
                phone="+1 (415) 555-2971", brand="acme", page_size=1,
                page_token=first.next_page_token,
            )
        )  # fmt: skip
        assert [e.event.event_type for e in spelt.events] == ["ConsentRevoked"]
        for phone, brand in ((other, "acme"), (PHONE, "globex")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.ListEvents(
                    api.ListEventsRequest(
                        phone=phone, brand=brand, page_size=1, page_token=first.next_page_token
                    )
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (phone, brand)
            assert _fields(err.value) == ["page_token"], (phone, brand)


async def test_a_review_queue_page_token_of_one_brand_is_refused_for_another(
    service: Runtime,
) -> None:
    """ListRevocationCandidates' page token names a place in the queue every brand
    shares: sent with another brand, it skipped that brand's candidates before the
    place, and a reviewer saw a queue short of pending revocations, with no error.
    A token pages through the listing that issued it only (brand and overdue_only)."""
    async with client(service.address) as admin:
        fresh = ""
        for n, (sender, phone) in enumerate(
            ((SENDER, "+14155552973"), ("+12125550198", "+14155552974"),
             (SENDER, "+14155552975"))
        ):  # fmt: skip
            w = await admin.HandleInboundMessage(
                api.HandleInboundMessageRequest(
                    request_id=f"queue-{n}-{uuid.uuid4().hex[:8]}", from_phone=phone,
                    to_phone=sender, body="please no more texts",
                    message_id=f"SM-queue-{n}-{uuid.uuid4().hex[:8]}", occurred_at=ts(_now()),
                )
            )  # fmt: skip
            fresh = w.consistency_token
        first = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", page_size=1, at_least_as_fresh=fresh)
        )
        assert first.next_page_token
        for brand, overdue_only in (("globex", False), ("acme", True)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.ListRevocationCandidates(
                    api.ListRevocationCandidatesRequest(
                        brand=brand, page_token=first.next_page_token, overdue_only=overdue_only
                    )
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, brand
            assert _fields(err.value) == ["page_token"], brand
        rest = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", page_token=first.next_page_token)
        )
        assert [c.event.phone for c in rest.candidates] == ["+14155552975"]
