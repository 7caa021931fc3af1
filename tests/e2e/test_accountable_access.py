"""Accountable access through the real gRPC server, on the real Kafka ledger and
PostgreSQL: every audit RPC records who read what (token name, the call, brand,
number, campaign, request id, time) in the append-only ``audit_access`` table before
it answers; refuses another brand's read (PERMISSION_DENIED), and records the
refusal as such; refuses a read it cannot record (UNAVAILABLE, unread); and
``ListAuditAccess`` lists them.

The table of audit RPCs is checked against the service's proto: an RPC documented
as "Audit:" that is not in it, or any RPC classified nowhere, fails the test, so a
new audit read cannot go without these checks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    opt_in,
    ts,
)
from tests.e2e.test_readme import answers, run_after_walk_through

PROTO = Path(__file__).resolve().parents[2] / "protos/consent/v1/consent_service.proto"
PHONE = "+14155552861"


def _now() -> datetime:
    return datetime.now(UTC)


# Each audit RPC, the request it is called with for acme's PHONE, and what its
# record says besides the caller, the call and the brand: (phone, campaign).
AUDIT: dict[str, tuple[Callable[[], Any], tuple[str, str]]] = {
    "GetConsent": (
        lambda: api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo"),
        (PHONE, "promo"),
    ),
    "ListEvents": (lambda: api.ListEventsRequest(phone=PHONE, brand="acme"), (PHONE, "")),
    "CanSendAsOf": (
        lambda: api.CanSendAsOfRequest(
            phone=PHONE, brand="acme", campaign="promo", at=ts(_now() - timedelta(minutes=1))
        ),
        (PHONE, "promo"),
    ),
    "GetOptOutRate": (
        lambda: api.GetOptOutRateRequest(brand="acme", campaign="promo"),
        ("", "promo"),
    ),
    "GetCampaignHealth": (
        lambda: api.GetCampaignHealthRequest(brand="acme", campaign="promo"),
        ("", "promo"),
    ),
    "StreamCampaignHealth": (
        lambda: api.StreamCampaignHealthRequest(brand="acme", campaign="promo"),
        ("", "promo"),
    ),
    "ListRevocationCandidates": (
        lambda: api.ListRevocationCandidatesRequest(brand="acme"),
        ("", ""),
    ),
    "WatchConsentChanges": (
        lambda: api.WatchConsentChangesRequest(brand="acme", from_now=True),
        ("", ""),
    ),
    "SweepCampaign": (
        lambda: api.SweepCampaignRequest(
            brand="acme",
            campaign="promo",
            start_time=ts(_now() - timedelta(days=1)),
            end_time=ts(_now() + timedelta(hours=1)),
        ),
        ("", "promo"),
    ),
    "GetProofPacket": (
        lambda: api.GetProofPacketRequest(phone=PHONE, brand="acme", campaign="promo"),
        (PHONE, "promo"),
    ),
    "ListAuditAccess": (lambda: api.ListAuditAccessRequest(brand="acme"), ("", "")),
}
NOT_AUDIT = {
    "CanSend",
    "CanSendBatch",
    "RecordOptIn",
    "RecordOptOut",
    "RecordReconfirmation",
    "RecordMessageSent",
    "RecordAgeVerification",
    "RecordSubscriberLocation",
    "HandleInboundMessage",
    "ResolveRevocationCandidate",
    "DefineCampaign",
    "ChangeCampaignPolicy",
    "SetBrandPolicy",
    "ImportConsents",
    "RecordDeliveryOutcome",
    "RecordMessagesSent",
    # Writes of retention: each is an event with who asked; they disclose no record.
    "RequestErasure",
    "PlaceLegalHold",
    "ReleaseLegalHold",
}
"""Calls that read nothing on record (checks, writes): not audit reads."""


def _documented_as_audit() -> set[str]:
    """The RPCs whose comment in the proto begins "Audit:"."""
    text = PROTO.read_text()
    found = set()
    for comment, name in re.findall(r"((?:\n  //[^\n]*)+)\n  rpc (\w+)\(", text):
        if comment.strip().startswith("// Audit:"):
            found.add(name)
    return found


def test_every_rpc_is_classified_and_every_audit_rpc_is_in_the_table() -> None:
    methods = set(api.DESCRIPTOR.services_by_name["ConsentService"].methods_by_name)
    assert set(AUDIT) | NOT_AUDIT == methods, "classify the new RPC here, as audit or not"
    assert not set(AUDIT) & NOT_AUDIT
    assert _documented_as_audit() == set(AUDIT)


async def _opted_in(serve: Callable[..., Any]) -> Runtime:
    at = _now() - timedelta(minutes=10)
    campaigns = [define(brand, "promo", at) for brand in ("acme", "globex")]
    runtime = await serve(name="access", campaigns=campaigns)
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(PHONE, "acme", "promo", at))
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token), 60)
    return runtime


@pytest.fixture
async def service(serve) -> Runtime:
    return await _opted_in(serve)


@pytest.fixture(scope="module")
async def reads(module_serve) -> Runtime:
    """One service for the reads of each audit RPC: each finds its record by a
    request id of its own, and counts its refusals from what it found before."""
    return await _opted_in(module_serve)


async def _call(
    address: str, rpc: str, who: str, request_id: str, request: Any = None
) -> tuple[grpc.StatusCode, Any]:
    """Call ``rpc`` as ``who`` with ``x-request-id``; its status and first answer. A
    stream is read to its first message (its read was recorded before it), or, for
    a change stream that has none yet, until its record is written."""
    metadata = [("authorization", f"Bearer {TOKENS[who][0]}"), ("x-request-id", request_id)]
    request = AUDIT[rpc][0]() if request is None else request
    async with grpc.aio.insecure_channel(address) as channel:
        method = getattr(api_grpc.ConsentServiceStub(channel), rpc)
        call = method(request, metadata=metadata, timeout=60)
        try:
            if rpc == "WatchConsentChanges":
                read = asyncio.ensure_future(call.read())
                status = asyncio.ensure_future(call.code())
                done, _ = await asyncio.wait({read, status}, timeout=5)
                if not done:  # no change to send: it waits, its read admitted
                    call.cancel()
                    return grpc.StatusCode.OK, None
                return await call.code(), None
            if rpc in ("SweepCampaign", "StreamCampaignHealth"):
                return grpc.StatusCode.OK, await call.read()
            return grpc.StatusCode.OK, await call
        except grpc.aio.AioRpcError as err:
            return err.code(), err


async def _records(dsn: str, request_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM audit_access WHERE request_id = $1", request_id)
    finally:
        await conn.close()


@pytest.mark.parametrize("rpc", sorted(AUDIT))
async def test_an_audit_read_is_recorded_before_it_is_answered(reads: Runtime, rpc: str) -> None:
    rid = f"rid-{rpc}-{uuid.uuid4().hex[:6]}"
    code, _ = await _call(reads.address, rpc, "acme-app", rid)
    assert code == grpc.StatusCode.OK
    assert reads.settings.postgres_dsn is not None
    (row,) = await _records(reads.settings.postgres_dsn, rid)
    phone, campaign = AUDIT[rpc][1]
    assert (row["subject"], row["action"], row["brand"], row["via"]) == (
        "acme-app",
        rpc,
        "acme",
        "grpc",
    )
    assert (row["phone"] or "", row["campaign"] or "") == (phone, campaign)
    assert abs(row["at"] - _now()) < timedelta(minutes=5)


@pytest.mark.parametrize("rpc", sorted(AUDIT))
async def test_another_brands_token_is_refused_and_recorded_as_refused(
    reads: Runtime, rpc: str
) -> None:
    def counted() -> float:
        return (
            reads.metrics.registry().get_sample_value(
                "consent_audit_refusals_total",
                {"action": rpc, "via": "grpc", "code": "PERMISSION_DENIED"},
            )
            or 0
        )

    async def refusals() -> float:
        # From a thread, as a scrape reads them: a metric read on the service's loop
        # (the open review candidates) waits on that loop, which this would block.
        return await asyncio.to_thread(counted)

    before = await refusals()
    dsn = reads.settings.postgres_dsn
    assert dsn is not None
    for who in ("globex-app", "acme-checker"):  # another brand; no audit scope
        rid = f"rid-denied-{uuid.uuid4().hex[:6]}"
        code, err = await _call(reads.address, rpc, who, rid)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, who)
        (row,) = await _records(dsn, rid)
        assert (row["subject"], row["action"], row["brand"], row["outcome"]) == (
            who,
            rpc,
            "acme",
            "refused",
        )
        assert row["refusal_code"] == "PERMISSION_DENIED"
        if err is not None:  # a change stream refused says so in its status alone
            assert row["refusal"] == err.details()
        told = "may not act for brand 'acme'" if who == "globex-app" else "lacks the audit scope"
        assert told in row["refusal"]
        assert (row["phone"] or "", row["campaign"] or "") == AUDIT[rpc][1]
    assert await refusals() == before + 2


async def test_bad_input_is_recorded_as_refused_once_and_an_unknown_caller_not_at_all(
    service: Runtime, postgres_dsn: str
) -> None:
    bad = api.GetProofPacketRequest(phone="12\x00" + "9" * 5000, brand="acme")
    code, _ = await _call(service.address, "GetProofPacket", "acme-app", "rid-bad-phone", bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    (row,) = await _records(postgres_dsn, "rid-bad-phone")
    assert (row["outcome"], row["refusal_code"], row["brand"]) == (
        "refused",
        "INVALID_ARGUMENT",
        "acme",
    )
    assert row["refusal"].startswith("phone: ")
    # The number as asked, made safe to store: its NUL escaped, its length cut.
    assert row["phone"].startswith("12\\x0099") and len(row["phone"]) == 256
    unknown = api.GetCampaignHealthRequest(brand="acme", campaign="nope")
    code, _ = await _call(service.address, "GetCampaignHealth", "acme-app", "rid-nope", unknown)
    assert code == grpc.StatusCode.NOT_FOUND
    # Admitted, and recorded once: the read found no such campaign.
    (row,) = await _records(postgres_dsn, "rid-nope")
    assert (row["outcome"], row["refusal_code"], row["campaign"]) == ("admitted", None, "nope")
    async with grpc.aio.insecure_channel(service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await api_grpc.ConsentServiceStub(channel).ListEvents(
                api.ListEventsRequest(phone=PHONE, brand="acme"),
                metadata=[("authorization", "Bearer nobody"), ("x-request-id", "rid-anon")],
            )
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _records(postgres_dsn, "rid-anon") == []


async def test_a_read_that_cannot_be_recorded_is_refused_unread(
    service: Runtime, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        # A real failure of the table's writes, as a full disk or a revoked grant
        # would give: every insert is refused.
        await conn.execute(
            "CREATE FUNCTION refuse_access() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'no room'; END; $$;"
            "CREATE TRIGGER refuse_access BEFORE INSERT ON audit_access"
            " FOR EACH ROW EXECUTE FUNCTION refuse_access()"
        )
        for rpc in sorted(AUDIT):
            rid = f"rid-refused-{uuid.uuid4().hex[:6]}"
            code, err = await _call(service.address, rpc, "acme-app", rid)
            assert code == grpc.StatusCode.UNAVAILABLE, rpc
            if err is not None and rpc != "WatchConsentChanges":
                status = rpc_status.from_call(err)
                info = error_details_pb2.ErrorInfo()
                assert any(d.Unpack(info) for d in status.details)
                assert info.reason == "ACCESS_NOT_RECORDED"
        # From a thread, as a scrape: a metric read on the loop waits on the loop.
        families = await asyncio.to_thread(lambda: list(service.metrics.registry().collect()))
        scraped = {
            (sample.name, sample.labels.get("action")): sample.value
            for family in families
            for sample in family.samples
        }
        for rpc in AUDIT:
            assert scraped[("consent_audit_reads_unrecorded_total", rpc)] >= 1, rpc
        await conn.execute("DROP TRIGGER refuse_access ON audit_access")
        code, _ = await _call(service.address, "GetProofPacket", "acme-app", "rid-again")
        assert code == grpc.StatusCode.OK
    finally:
        await conn.close()


async def test_list_audit_access_shows_the_brands_reads_newest_first(service: Runtime) -> None:
    await _call(service.address, "GetProofPacket", "acme-app", "rid-packet")
    await _call(
        service.address,
        "ListEvents",
        "globex-app",
        "rid-globex",
        api.ListEventsRequest(phone=PHONE, brand="globex"),
    )
    await _call(
        service.address, "ListEvents", "admin", "rid-every", api.ListEventsRequest(phone=PHONE)
    )
    _, acme = await _call(service.address, "ListAuditAccess", "acme-app", "rid-list")
    assert [(a.action, a.request_id) for a in acme.accesses] == [
        ("ListAuditAccess", "rid-list"),
        ("GetProofPacket", "rid-packet"),
    ]
    packet = acme.accesses[1]
    assert (packet.subject, packet.brand, packet.phone, packet.campaign) == (
        "acme-app",
        "acme",
        PHONE,
        "promo",
    )
    _, every = await _call(
        service.address, "ListAuditAccess", "admin", "rid-all", api.ListAuditAccessRequest()
    )
    assert [a.request_id for a in every.accesses][:4] == [
        "rid-all",
        "rid-list",
        "rid-every",
        "rid-globex",
    ]
    assert every.accesses[2].brand == ""  # a read across every brand
    # a brand-limited token lists only its brands
    code, _ = await _call(
        service.address, "ListAuditAccess", "acme-app", "rid-x", api.ListAuditAccessRequest()
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # pages, by number
    _, first = await _call(
        service.address,
        "ListAuditAccess",
        "admin",
        "rid-p1",
        api.ListAuditAccessRequest(brand="acme", phone=PHONE, page_size=1),
    )
    _, second = await _call(
        service.address,
        "ListAuditAccess",
        "admin",
        "rid-p2",
        api.ListAuditAccessRequest(
            brand="acme", phone=PHONE, page_size=1, page_token=first.next_page_token
        ),
    )
    assert [a.request_id for a in [*first.accesses, *second.accesses]] == ["rid-p1", "rid-packet"]
    code, _ = await _call(
        service.address,
        "ListAuditAccess",
        "admin",
        "rid-bad",
        api.ListAuditAccessRequest(brand="acme", page_token="not-ours"),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A token pages the listing that issued it only: read for another (another
    # brand, no number, another reader), it skipped that listing's newer reads.
    for n, other in enumerate(
        (
            api.ListAuditAccessRequest(brand="acme", page_token=first.next_page_token),
            api.ListAuditAccessRequest(
                brand="globex", phone=PHONE, page_token=first.next_page_token
            ),
            api.ListAuditAccessRequest(
                brand="acme", phone=PHONE, subject="admin", page_token=first.next_page_token
            ),
        )
    ):
        code, _ = await _call(service.address, "ListAuditAccess", "admin", f"rid-o{n}", other)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, other


async def _access_cli(*argv: str, token: str) -> tuple[int | None, str, str]:
    """``consent-ledger audit access`` in a process of its own (the service runs in
    this test's event loop, so the call must not block it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "audit",
        "access",
        *argv,
        env={**os.environ, "CONSENT_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_lists_who_read_what_and_is_listed_itself(service: Runtime) -> None:
    await _call(service.address, "GetProofPacket", "acme-app", "rid-cli-packet")
    code, out, err = await _access_cli(
        "--brand", "acme", "--address", service.address, token=TOKENS["acme-app"][0]
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "acme-app  ListAuditAccess  acme  request " in lines[0]
    assert (
        f"acme-app  GetProofPacket  acme {PHONE} promo  request rid-cli-packet via grpc"
        in (lines[1])
    )
    assert "2 read(s) listed" in err
    code, out, err = await _access_cli(
        "--brand", "acme", "--phone", PHONE, "--json", "--address", service.address,
        token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert [(f["action"], f["phone"]) for f in found] == [
        ("ListAuditAccess", PHONE),
        ("GetProofPacket", PHONE),
    ]
    code, _, err = await _access_cli(
        "--brand", "acme", "--address", service.address, token=TOKENS["globex-app"][0]
    )
    assert code == 1 and "PERMISSION_DENIED" in err


async def test_the_readme_access_calls_run_as_written(tmp_path: Path, postgres_dsn: str) -> None:
    """README's "Who read what" block, after the "Calling the API" walk-through it
    follows, with grpcurl and the installed CLI, against a real service."""
    done = await run_after_walk_through("readme-access", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    end = done.stdout.rindex("}") + 1  # grpcurl's answers; then the CLI's lines
    listed = next(a for a in answers(done.stdout[:end])[1] if "accesses" in a)["accesses"]
    assert [(a["action"], a["subject"], a["brand"], a["phone"]) for a in listed] == [
        ("ListAuditAccess", "admin", "acme", "+14155552671"),
        ("ListEvents", "admin", "acme", "+14155552671"),
    ]
    assert listed[1]["requestId"] == "case-2291-events"
    cli = done.stdout[end:].strip().splitlines()
    assert len(cli) == 3 and "admin  ListAuditAccess  acme +14155552671  request " in cli[0]
    assert "ListEvents  acme +14155552671  request case-2291-events via grpc" in cli[2]
    assert "3 read(s) listed" in done.stderr
