"""Retention, legal holds and erasure end to end, on the real Kafka ledger and
PostgreSQL, with the service's clock moved past the retention period: an early
erasure refused with its date, a legal hold's refusal, a completed erasure after
both; then the ledger still verifies, its bytes hold no personal data, reads show
it erased, the proof packet still proves its events, and CanSend says no."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.retention import add_years
from services.adapters.kafka_audit import KafkaCheckpoints
from services.checkpoints import Keyring, SigningKey
from services.proofs import check_bundle
from tests.e2e.harness import (
    TOKENS,
    Clock,
    client,
    define,
    inbound,
    kafka_ledger_env,
    noon_in_los_angeles,
    opt_in,
    ts,
)
from tests.e2e.test_readme import run_after_walk_through
from tests.e2e.test_tamper_evidence import checkpointed, consent_ledger, keyring

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552881"  # opts in, texts, opts out
QUIET = "+14155552882"  # opts in only
SENDER = "+12125550188"
PERSONAL = ("Ada Lovelace", "ada@example.com", "1 Main St, Springfield", "203.0.113.7")
SAID = "this is Ada, please call me at home"


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {err}")


def erase(phone: str, request_id: str | None = None) -> api.RequestErasureRequest:
    return api.RequestErasureRequest(
        request_id=request_id or uuid.uuid4().hex, phone=phone, brand="acme", reference="DSR-1"
    )


@pytest.fixture
async def service(serve, tmp_path, postgres_dsn, kafka_bootstrap):
    # Noon in Los Angeles, at least two hours ahead: every fact then happens after
    # the broker records it, so the retention period runs from a known moment.
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    key = SigningKey.generate(tmp_path / "checkpoint-key.pem")
    runtime = await serve(
        name="erasure",
        clock=clock,
        campaigns=[define("acme", "promo", clock.now - timedelta(days=1), [SENDER])],
        checkpoint_key_file=tmp_path / "checkpoint-key.pem",
        checkpoint_interval=0.5,
    )
    kafka = runtime.settings.kafka
    assert kafka is not None
    env = {"CONSENT_POSTGRES_DSN": postgres_dsn, **kafka_ledger_env(kafka)}
    return runtime, clock, keyring(tmp_path, key), env, kafka


async def _life(c, when: datetime) -> datetime:
    """PHONE opts in, texts, opts out; QUIET opts in. When the last fact happened."""
    start = when - timedelta(minutes=30)
    await c.RecordOptIn(opt_in(PHONE, "acme", "promo", start))
    await c.RecordOptIn(opt_in(QUIET, "acme", "promo", start))
    await c.HandleInboundMessage(
        inbound(PHONE, SENDER, SAID, start + timedelta(minutes=5), message_id="SM-in-1")
    )
    last = start + timedelta(minutes=10)
    await c.RecordOptOut(
        api.RecordOptOutRequest(
            request_id=uuid.uuid4().hex,
            phone=PHONE,
            brand="acme",
            campaign="promo",
            channel=lpb.REVOCATION_CHANNEL_WEB,
            text="Ada here: remove me",
            occurred_at=ts(last),
        )
    )
    return last


async def test_erasure_is_refused_early_and_under_a_hold_then_done_and_the_ledger_verifies(
    service, tmp_path
):
    runtime, clock, keys, env, kafka = service
    async with client(runtime.address) as c:
        last = await _life(c, clock.now)

        # Inside the retention period: refused, with the date it becomes possible.
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await c.RequestErasure(erase(PHONE))
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(early.value)
        possible = add_years(last, 5)
        assert info.reason == "RETENTION_PERIOD"
        assert info.metadata["possible_from"] == possible.isoformat()
        assert possible.isoformat() in early.value.details()

        # A legal hold refuses it even after the period.
        await c.PlaceLegalHold(
            api.PlaceLegalHoldRequest(
                request_id=uuid.uuid4().hex,
                phone=PHONE,
                brand="acme",
                hold_id="smith-v-acme",
                reason="Smith v. Acme",
            )
        )
        clock.now = add_years(clock.now, 6)
        with pytest.raises(grpc.aio.AioRpcError) as held:
            await c.RequestErasure(erase(PHONE))
        assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(held.value).reason == "LEGAL_HOLD"
        assert error_info(held.value).metadata["holds"] == "smith-v-acme"

        # Released, the erasure is done: the key destroyed, the erasure recorded.
        await c.ReleaseLegalHold(
            api.ReleaseLegalHoldRequest(
                request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", hold_id="smith-v-acme"
            )
        )
        done = await c.RequestErasure(erase(PHONE, "erase-phone"))
        assert done.keys_destroyed == 1
        assert done.retained_until.ToDatetime(UTC) == possible
        # The other number with the CLI, a client of this service and its clock.
        code, out, err = await consent_ledger(
            "audit", "erase", "--address", runtime.address, "--phone", QUIET,
            "--brand", "acme", "--reference", "DSR-2",
            env={"CONSENT_TOKEN": TOKENS["admin"][0]},
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith(f"erased {QUIET} for acme: event ")
        assert f"1 key(s) destroyed (retention ended {possible.date().isoformat()})" in out
        quiet_token = out.rsplit("consistency token ", 1)[1].strip()

        # ListEvents: every fact still there, its personal data erased.
        listed = await c.ListEvents(
            api.ListEventsRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=done.consistency_token
            )
        )
        kinds = [e.event.event_type for e in listed.events]
        assert kinds[:3] == ["ConsentGranted", "InboundMessageReceived", "ConsentRevoked"]
        assert kinds[-1] == "SubjectErased" and "LegalHoldPlaced" in kinds
        shown = json_format.MessageToJson(listed)
        assert "[erased]" in shown
        for text in (*PERSONAL, SAID, "Ada here"):
            assert text not in shown
        grant = listed.events[0].event.consent_granted
        assert grant.proof.name == grant.proof.email == "[erased]"
        assert grant.proof.form_url == "https://acme.example/sms-signup?utm=spring"

        # CanSend: no, for the erased subscriber, with a reason; a START does not
        # bring back the erased consent; a fresh opt-in after the erasure does.
        erased_answer = await c.CanSend(
            api.CanSendRequest(
                phone=QUIET,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=quiet_token,
            )
        )
        assert not erased_answer.allowed
        assert erased_answer.reason == api.REASON_SUBJECT_ERASED
        consent = await c.GetConsent(
            api.GetConsentRequest(
                phone=QUIET, brand="acme", campaign="promo", at_least_as_fresh=quiet_token
            )
        )
        assert consent.state == api.CONSENT_STATE_ERASED
        # Every other way of asking says no too: in a batch, and as of now.
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[QUIET], brand="acme", campaign="promo", at_least_as_fresh=quiet_token
            )
        )
        assert [(d.allowed, d.reason) for d in batch.decisions] == [
            (False, api.REASON_SUBJECT_ERASED)
        ]
        as_of = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=QUIET,
                brand="acme",
                campaign="promo",
                at=ts(clock.now),
                at_least_as_fresh=quiet_token,
            )
        )
        assert (as_of.allowed, as_of.reason) == (False, api.REASON_SUBJECT_ERASED)
        # A minute after the erasure: one at its very time would be refused, as
        # every record dated no later is (tests/e2e/test_erased_writes.py).
        start = await c.HandleInboundMessage(
            inbound(PHONE, SENDER, "START", clock.now + timedelta(minutes=1), message_id="SM-in-2")
        )
        after_start = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=start.consistency_token,
            )
        )
        assert not after_start.allowed
        assert after_start.reason in (api.REASON_REVOKED, api.REASON_SUBJECT_ERASED)
        clock.now += timedelta(minutes=10)
        fresh = await c.RecordOptIn(
            opt_in(QUIET, "acme", "promo", clock.now - timedelta(minutes=1))
        )
        again = await c.CanSend(
            api.CanSendRequest(
                phone=QUIET,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=fresh.consistency_token,
            )
        )
        assert again.allowed, again.detail

        # The proof packet after erasure: whole, erased where personal, and its
        # events still proven against the signed checkpoints.
        store = KafkaCheckpoints(kafka)
        await store.start(write=False)
        try:
            await checkpointed(runtime, store)
        finally:
            await store.close()
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=PHONE,
                brand="acme",
                format=api.PACKET_FORMAT_JSON,
                at_least_as_fresh=start.consistency_token,
            )
        )
        document = json.loads(packet.document)
        text = json.dumps(document)
        assert "[erased]" in text and "personal data erased (DSR-1)" in text
        for said in (*PERSONAL, SAID):
            assert said not in text
        assert len(document["opt_ins"]) == 1 and len(document["opt_outs"]) == 1
        evidence = document["tamper_evidence"]
        assert evidence["status"] == "proven", evidence
        proven, problems = check_bundle(evidence["bundle"], Keyring.load(keys))
        assert problems == []
        positions = {(e["partition"], e["offset"]) for e in document["events"]}
        assert {(r.partition, r.offset) for r in proven} == positions
        # The signed bytes are the sealed events: the chain is over the ciphertext.
        envelopes = [lpb.EventEnvelope.FromString(r.value) for r in proven]
        grants = [e for e in envelopes if e.event_type == "ConsentGranted"]
        assert grants and all(e.HasField("sealed") for e in grants)

    # The tamper verifier still passes over the whole ledger, and no record's bytes
    # hold the personal data.
    code, out, err = await consent_ledger("verify", "--keys", str(keys), env=env)
    assert code == 0, out + err
    assert "verified: every checkpointed record is as it was signed" in out
    export = tmp_path / "ledger.jsonl"
    code, _, err = await consent_ledger("export", "--output", str(export), env=env)
    assert code == 0, err
    values = [
        base64.b64decode(line["value"])
        for line in map(json.loads, export.read_text().splitlines())
        if "value" in line
    ]
    assert len(values) >= 8
    for said in (*PERSONAL, SAID):
        assert not any(said.encode() in v for v in values)


async def test_the_readme_erasure_calls_run_as_written(tmp_path, postgres_dsn):
    """README's "Retention, erasure and legal holds" block, after the "Calling the
    API" walk-through it follows, with grpcurl and the installed CLI."""
    done = await run_after_walk_through("readme-erasure", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Code: FailedPrecondition" in done.stderr
    assert "erasure is possible from then" in done.stderr
    assert "legal hold smith-v-acme placed: event " in done.stdout
    assert "reason: LEGAL_HOLD" in done.stderr and "holds: smith-v-acme" in done.stderr
    assert "legal hold smith-v-acme released: event " in done.stdout
