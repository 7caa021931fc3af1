"""The proof-of-opt-in packet through the real gRPC server, on the real Kafka ledger
and PostgreSQL: after an opt-in with proof, messages, a STOP and its confirmation,
``GetProofPacket`` gives the JSON packet and a PDF that shows the same; an audit
token sees only its own brands; bad input is refused by field."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pypdf
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.ports import ConsistencyToken
from services.checkpoints import Keyring, PublicKey, SigningKey
from services.packets import timeline
from services.proofs import check_bundle
from tests.e2e.harness import (
    TOKENS,
    Clock,
    client,
    define,
    inbound,
    kafka_settings,
    opt_in,
    opt_out,
    proof,
    running,
    sent,
    service_settings,
    status_details,
    ts,
)
from tests.e2e.harness import imported as import_records
from tests.e2e.test_readme import answers, run_after_walk_through

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552791"
GLOBEX_PHONE = "+14155552792"
SENDER = "+12125550177"


@pytest.fixture
async def service(serve):
    clock = Clock()
    campaigns = [
        define(brand, "promo", clock.now - timedelta(days=1), [number])
        for brand, number in (("acme", SENDER), ("globex", "+12125550178"))
    ]
    return await serve(name="packet", clock=clock, campaigns=campaigns), clock.now


async def _life(c, when):
    """Opt-in (without an email), two messages, STOP, the confirmation; the last token."""
    start = when - timedelta(minutes=30)
    thin = proof(start)
    thin.ClearField("email")
    await c.RecordOptIn(opt_in(PHONE, "acme", "promo", start, proof=thin))
    await c.RecordMessageSent(
        sent(PHONE, "acme", "promo", start + timedelta(minutes=5), message_id="SM-first")
    )
    await c.RecordMessageSent(
        sent(
            PHONE,
            "acme",
            "promo",
            start + timedelta(minutes=10),
            message_id="SM-second",
            included_opt_out_language=False,
        )
    )
    stop = await c.HandleInboundMessage(
        inbound(PHONE, SENDER, "STOP", start + timedelta(minutes=20), message_id="SM-in-stop")
    )
    assert stop.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
    w = await c.RecordMessageSent(
        sent(
            PHONE,
            "acme",
            "promo",
            start + timedelta(minutes=21),
            message_id="SM-confirm",
            kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
        )
    )
    return w.consistency_token


async def test_a_packet_after_the_opt_out_as_json_and_pdf(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        token = await _life(c, when)
        answer = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                format=api.PACKET_FORMAT_JSON,
                at_least_as_fresh=token,
            )
        )
        assert answer.content_type == "application/json"
        packet = json.loads(answer.document)
        # The Struct carries the same packet (numbers as JSON numbers).
        assert json_format.MessageToDict(answer.packet)["phone"] == PHONE == packet["phone"]
        assert packet["brand"] == "acme" and packet["campaign"] == "promo"
        assert packet["consistency_token"] == answer.consistency_token
        [opt_in_] = packet["opt_ins"]
        values = {i["key"]: i["value"] for i in opt_in_["template"]}
        given = proof(when)
        assert values["name"] == given.name == "Ada Lovelace"
        assert values["ip_address"] == given.ip_address
        assert values["form_url"] == given.form_url
        assert values["screenshot_sha256"] == given.screenshot_sha256
        assert values["email"] is None
        assert opt_in_["event"]["recorded_by"] == "acme-app"
        assert opt_in_["first_message"]["message_id"] == "SM-first"
        assert [m["field"] for m in packet["missing"]] == [
            "opt_ins[0].email",
            "opt_ins[0].first_message.text",
        ]
        decisions = [
            (m["message_id"], m["decision"]["allowed"], m["decision"]["reason"])
            for m in packet["messages"]
        ]
        assert decisions == [
            ("SM-first", True, "consent_active"),
            ("SM-second", True, "consent_active"),
            ("SM-confirm", True, "opt_out_confirmation_allowed"),
        ]
        assert opt_in_["event"]["event_id"] in packet["messages"][0]["decision"]["evidence"]
        [stop] = packet["opt_outs"]
        assert stop["text"] == "STOP" and stop["in_reply_to"] == "SM-in-stop"
        assert stop["confirmation"] == packet["messages"][2]["event"]["event_id"]
        [reply] = packet["replies"]
        assert reply["read_as"] == "opt_out" and reply["recorded"] == [stop["event"]["event_id"]]
        assert [p["kind"] for p in packet["timeline"]] == [
            "grant",
            "message",
            "message",
            "stop",
            "confirmation",
        ]
        assert [e["type"] for e in packet["events"]] == [
            "ConsentGranted",
            "MessageSent",
            "MessageSent",
            "InboundMessageReceived",
            "ConsentRevoked",
            "MessageSent",
        ]

        pdf = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=PHONE, brand="acme", format=api.PACKET_FORMAT_PDF, at_least_as_fresh=token
            )
        )
        assert pdf.content_type == "application/pdf"
        assert pdf.document.startswith(b"%PDF-")
        reader = pypdf.PdfReader(io.BytesIO(pdf.document))
        text = "\n".join(page.extract_text() for page in reader.pages)
        assert "Proof of opt-in" in text and PHONE in text
        assert "Ada Lovelace" in text
        assert "Missing: opt_ins[0].email" in text
        assert "ALLOWED: consent_active" in text
        assert "ALLOWED: opt_out_confirmation_allowed" in text
        assert "revoked from then on; one confirmation sent" in text

        html = await c.GetProofPacket(
            api.GetProofPacketRequest(phone=PHONE, brand="acme", format=api.PACKET_FORMAT_HTML)
        )
        assert html.content_type == "text/html; charset=utf-8"
        page = html.document.decode()
        assert "<svg" in page and page.count('<g class="point ') == 5

        bare = await c.GetProofPacket(api.GetProofPacketRequest(phone=PHONE, brand="acme"))
        assert bare.document == b"" and bare.content_type == ""
        assert json_format.MessageToDict(bare.packet)["opt_ins"]


async def test_an_audit_token_sees_only_its_own_brands(service):
    runtime, when = service
    async with client(runtime.address, "globex-app") as globex:
        await globex.RecordOptIn(opt_in(GLOBEX_PHONE, "globex", "promo", when))
    async with client(runtime.address, "acme-app") as acme:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await acme.GetProofPacket(
                api.GetProofPacketRequest(
                    phone=GLOBEX_PHONE, brand="globex", format=api.PACKET_FORMAT_PDF
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Its own brand's packet of that number holds nothing of globex's.
        own = await acme.GetProofPacket(api.GetProofPacketRequest(phone=GLOBEX_PHONE, brand="acme"))
        packet = json_format.MessageToDict(own.packet)
        assert packet["opt_ins"] == [] and packet["events"] == []
        assert [m["field"] for m in packet["missing"]] == ["opt_ins"]
    async with client(runtime.address, "acme-checker") as checker:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await checker.GetProofPacket(api.GetProofPacketRequest(phone=PHONE, brand="acme"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address, "globex-admin") as other:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await other.GetProofPacket(api.GetProofPacketRequest(phone=PHONE, brand="acme"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_input_is_refused_naming_every_field(service):
    runtime, _ = service
    async with client(runtime.address) as admin:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.GetProofPacket(
                api.GetProofPacketRequest(
                    phone="not a number",
                    brand="Acme!",
                    campaign="",
                    format=99,
                    at_least_as_fresh="nonsense",
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = {f for f, _ in status_details(refused.value)}
        assert fields == {"phone", "brand", "campaign", "format", "at_least_as_fresh"}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.GetProofPacket(
                api.GetProofPacketRequest(phone=PHONE, brand="acme", campaign="promo-typo")
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def _cli(*argv, token: str):
    """``consent-ledger audit packet`` in a process of its own (the service runs in
    this test's event loop, so the call must not block it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "audit",
        "packet",
        *argv,
        env={**os.environ, "CONSENT_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out, err.decode()


async def test_the_cli_writes_the_packet_and_says_what_it_holds(service, tmp_path):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        token = await _life(c, when)
        await c.GetProofPacket(
            api.GetProofPacketRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
        )
    target = tmp_path / "proof.pdf"
    code, _, err = await _cli(
        "--phone", PHONE, "--brand", "acme", "--campaign", "promo",
        "--format", "pdf", "-o", str(target), "--address", runtime.address,
        token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {target} (pdf, " in err
    assert "opt-ins: 1; messages: 3 (0 not allowed when sent" in err
    assert "missing: opt_ins[0].email, opt_ins[0].first_message.text" in err
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(target).pages)
    assert "Ada Lovelace" in text and "ALLOWED: opt_out_confirmation_allowed" in text
    code, out, err = await _cli(
        "--phone", PHONE, "--brand", "acme", "--format", "json", "-o", "-",
        "--address", runtime.address, "--progress", token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert code == 0, err
    packet = json.loads(out)
    assert packet["opt_ins"][0]["template"][0]["value"] == "Ada Lovelace"
    # The progress line: every event of the packet read, at its rate.
    n = len(packet["events"])
    assert f"packet [##############################] 100.0%  {n} of {n} events  " in err
    # Another brand's token: refused, and the file is not written.
    refused = tmp_path / "refused.pdf"
    code, _, err = await _cli(
        "--phone", PHONE, "--brand", "acme", "-o", str(refused),
        "--address", runtime.address, token=TOKENS["globex-app"][0],
    )  # fmt: skip
    assert code == 1 and "PERMISSION_DENIED" in err
    assert not refused.exists()
    code, _, err = await _cli(
        "--phone", "555", "--brand", "acme", "-o", str(refused),
        "--address", runtime.address, token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert code == 1 and "INVALID_ARGUMENT" in err and "  phone: " in err


async def test_the_readme_packet_calls_run_as_written(tmp_path, postgres_dsn):
    """README's "Proof of opt-in" block, after the "Calling the API" walk-through it
    follows, with grpcurl and the installed CLI, against a real service."""
    done = await run_after_walk_through("readme-packet", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    packet = answers(done.stdout)[1][-1]["packet"]
    assert packet["phone"] == "+14155552671" and packet["campaign"] == "promo"
    assert [m["field"] for m in packet["missing"]] == [
        "opt_ins[0].email",
        "opt_ins[0].postal_address",
        "opt_ins[0].first_message",
    ]
    assert packet["opt_outs"][0]["text"] == "Stop"
    assert "wrote proof.pdf (pdf, " in done.stderr
    assert "  missing: opt_ins[0].email, opt_ins[0].postal_address, opt_ins[0].first_message" in (
        done.stderr
    )
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(tmp_path / "proof.pdf").pages)
    assert "Ada Lovelace" in text and "Missing: opt_ins[0].email" in text


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_the_packet_carries_the_proof_of_its_events_against_signed_checkpoints(
    tmp_path, postgres_dsn, kafka_bootstrap, ledger
):
    """Checked with the public key alone: each of the packet's events is in the
    ledger, unchanged, at the partition and offset the packet gives."""
    SigningKey.generate(tmp_path / "checkpoint-key.pem")
    kafka = None
    if ledger == "kafka":
        kafka = kafka_settings(kafka_bootstrap, f"packet-{uuid.uuid4().hex[:8]}.")
    settings = replace(
        service_settings(tmp_path, postgres_dsn, kafka=kafka),
        checkpoint_key_file=tmp_path / "checkpoint-key.pem",
        checkpoint_interval=0.5,
    )
    at = datetime.now(UTC) - timedelta(minutes=10)
    async with running(settings) as runtime, client(runtime.address) as admin:
        w = await admin.DefineCampaign(define("acme", "promo", at - timedelta(days=1)))
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(w.consistency_token), timeout=60
        )
        await admin.RecordOptIn(opt_in(PHONE, "acme", "promo", at))
        w = await admin.RecordOptOut(
            api.RecordOptOutRequest(
                request_id=uuid.uuid4().hex,
                phone=PHONE,
                brand="acme",
                campaign="promo",
                channel=lpb.REVOCATION_CHANNEL_API,
                occurred_at=ts(at + timedelta(minutes=1)),
            )
        )
        packet: dict = {}
        for _ in range(120):  # until a checkpoint covers both events
            answer = await admin.GetProofPacket(
                api.GetProofPacketRequest(
                    phone=PHONE, brand="acme", at_least_as_fresh=w.consistency_token
                )
            )
            packet = json_format.MessageToDict(answer.packet)
            if packet["tamper_evidence"]["status"] == "proven":
                break
            await asyncio.sleep(0.25)
        evidence = packet["tamper_evidence"]
        assert evidence["status"] == "proven", evidence
    # Struct numbers are floats: the bundle as JSON again, as a reader would hold it.
    bundle = json.loads(json.dumps(evidence["bundle"]), parse_float=lambda v: int(float(v)))
    public = Keyring([PublicKey.from_json(evidence["public_key"])])
    proven, problems = check_bundle(bundle, public)
    assert problems == []
    events = {(int(e["partition"]), int(e["offset"])): e["event_id"] for e in packet["events"]}
    assert len(events) == 2
    assert {(r.partition, r.offset) for r in proven} == set(events)
    for record in proven:  # the signed bytes are the events the packet names
        envelope = lpb.EventEnvelope.FromString(record.value)
        assert envelope.event_id == events[(record.partition, record.offset)]


async def test_the_timeline_picture_shows_consent_as_the_fold_of_the_facts_leaves_it(service):
    """The picture coloured the line after each point by that point's kind alone: an
    opt-in drew "consent active" after it even where CanSend denied by the facts'
    own times (an opt-out at the same instant, which wins the tie, sent first as the
    import command sends them; an opt-out held for review before it, or naming no
    defined campaign; a START with no opt-in before it)."""
    runtime, now = service
    t1, t2, t3 = (now - timedelta(hours=h) for h in (3, 2, 1))
    numbers = [f"+1415555{2793 + i}" for i in range(4)]
    tied, held, unattributed, started = numbers
    imported = [
        api.ImportRecord(opt_out=opt_out(tied, "acme", None, t2)),
        api.ImportRecord(opt_in=opt_in(tied, "acme", "promo", t2)),
    ]
    for number, named, channel in ((held, "promo", 0), (unattributed, "nope", 1)):
        imported += [
            api.ImportRecord(opt_in=opt_in(number, "acme", "promo", t1)),
            api.ImportRecord(opt_out=opt_out(number, "acme", named, t2, channel=channel)),
            api.ImportRecord(opt_in=opt_in(number, "acme", "promo", t3)),
        ]
    async with client(runtime.address, "acme-app") as c:
        token = ConsistencyToken.decode((await import_records(c, *imported)).consistency_token)
        w = await c.HandleInboundMessage(inbound(started, SENDER, "START", t2))
        fresh = token.merge(ConsistencyToken.decode(w.consistency_token)).encode()
        for number, state in zip(numbers, ("revoked", "review", "revoked", "none"), strict=True):
            asked = dict(phone=number, brand="acme", campaign="promo", at_least_as_fresh=fresh)
            answer = await c.CanSend(api.CanSendRequest(**asked))
            assert not answer.allowed, (number, answer)
            packet = await c.GetProofPacket(
                api.GetProofPacketRequest(**asked, format=api.PACKET_FORMAT_HTML)
            )
            drawn = re.findall(r'<line [^>]*stroke="(#[0-9a-f]{6})"', packet.document.decode())
            assert drawn[-1] == timeline.STATE_COLOURS[state][0], (number, state, drawn)
