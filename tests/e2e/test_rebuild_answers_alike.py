"""Every read answer is the same after the view is rebuilt from the ledger, on the
real Kafka ledger and PostgreSQL: a mixed history written through every write RPC
and the import CLI (opt-ins of each method, opt-outs of a campaign and of the brand,
texts, sends one at a time and batched, imports with refusals and a repeat, campaign
redefinitions, a legal hold, an erasure, facts backdated and stamped ahead, two
spellings of a number, retried requests), then everything a reader can ask recorded
and asked again after a restart, ``consent-ledger rebuild``, ``rebuild --workers 2``
and a rebuild killed partway and run again. An auditor finding a rebuilt view
answering otherwise than the live one (worst, allowing a send it refused) would
find the view untrustworthy. The embedded default's ledger table is rebuilt by the
same code (``test_rebuild_while_writing.py`` and ``test_rebuild_while_serving.py`` run
on it); this test runs on Kafka alone, for the suite's time (about a minute a ledger)."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from ledger.ports import ConsistencyToken
from services.settings import Settings
from tests.e2e.harness import (
    TOKENS,
    Client,
    Clock,
    client,
    define,
    defined,
    held_info,
    inbound,
    kafka_service_settings,
    opt_in,
    opt_out,
    running,
    sent,
    ts,
)
from tests.e2e.test_bulk_import import import_cli
from tests.e2e.test_rebuild_resume import applied, rebuild_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
SENDERS = {
    ("acme", "promo"): "+12125550401",
    ("acme", "alerts"): "+12125550402",
    ("acme", "wine"): "+12125550403",
    ("globex", "deals"): "+12125550411",
    ("globex", "info"): "+12125550412",
}
PHONES = [f"+1415555{2100 + i:04d}" for i in range(10)]
WINDOW = (timedelta(days=-4), timedelta(0))
KINDS = (
    lpb.MESSAGE_KIND_REGULAR,
    lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    lpb.MESSAGE_KIND_HELP_REPLY,
    lpb.MESSAGE_KIND_RECONFIRMATION_REQUEST,
    lpb.MESSAGE_KIND_CONVERSATION_REPLY,
    lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
)
"""Each moment is asked about as a regular message; now, as each kind."""
MOMENTS = (
    timedelta(0),
    timedelta(minutes=-30),
    timedelta(hours=-2, minutes=-30),
    timedelta(hours=-26),
    timedelta(hours=-50),
    timedelta(hours=2),
)


def campaigns(now: datetime) -> list[api.DefineCampaignRequest]:
    since = now - timedelta(days=10)
    return [
        define("acme", "promo", since, [SENDERS["acme", "promo"]], daily_cap=3),
        define(
            "acme",
            "alerts",
            since,
            [SENDERS["acme", "alerts"]],
            purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
        ),
        define("acme", "wine", since, [SENDERS["acme", "wine"]], category="alcohol"),
        define(
            "globex",
            "deals",
            since,
            [SENDERS["globex", "deals"]],
            frequency_caps=[lpb.FrequencyCap(limit=2, window=Duration(seconds=7 * 86400))],
        ),
        define(
            "globex",
            "info",
            since,
            [SENDERS["globex", "info"]],
            purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
            reconfirm_interval=Duration(seconds=86400),
        ),
    ]


def rid() -> str:
    return uuid.uuid4().hex


class History:
    """What was written: the freshest token, and real times between the writes
    (what the ledger knew then, for CanSendAsOf's ``known_at``)."""

    def __init__(self) -> None:
        self.token = ConsistencyToken({})
        self.known: list[datetime] = []

    def wrote(self, token: str) -> None:
        if token:
            self.token = self.token.merge(ConsistencyToken.decode(token))

    async def write(self, c: Client, rpc: str, request: Any) -> Any:
        """``request`` through ``rpc``; a write refused (and held) is part of the
        history too."""
        try:
            answer = await getattr(c, rpc)(request)
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            if info is not None:
                self.wrote(info["consistency_token"])
            return err
        self.wrote(answer.consistency_token)
        return answer

    def mark(self) -> None:
        self.known.append(datetime.now(UTC))


def export(path: Path, now: datetime) -> Path:
    """Another platform's export: opt-ins, an opt-out, and two records refused."""

    def iso(at: datetime) -> str:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    columns = ["type", "import_id", "phone", "brand", "campaign", "occurred_at", "tier"]
    columns += ["method", "channel", "text", "proof.registered_at", "proof.name"]
    columns += ["proof.ip_address", "proof.form_url", "proof.consent_text"]
    proof = {
        "proof.name": "Ada Lovelace",
        "proof.ip_address": "203.0.113.7",
        "proof.form_url": "https://acme.example/join",
        "proof.consent_text": "Yes, text me offers. Reply STOP to cancel.",
    }

    def joined(i: str, phone: str, campaign: str, at: datetime) -> dict[str, str]:
        return {
            "type": "opt_in",
            "import_id": i,
            "phone": phone,
            "brand": "acme",
            "campaign": campaign,
            "occurred_at": iso(at),
            "tier": "promotional",
            "method": "web_form",
            "proof.registered_at": iso(at),
            **proof,
        }

    rows = [
        joined("x-8", PHONES[8], "promo", now - timedelta(days=3)),
        joined("x-9", "(415) 555-2109", "promo", now - timedelta(days=3)),
        joined("x-9w", PHONES[9], "wine", now - timedelta(days=2)),
        {
            "type": "opt_out",
            "import_id": "x-9-out",
            "phone": PHONES[9],
            "brand": "acme",
            "campaign": "promo",
            "occurred_at": iso(now - timedelta(hours=20)),
            "channel": "keyword",
            "text": "STOP",
        },
        joined("x-bad", "+1 415 CALL ME", "promo", now - timedelta(days=1)),
        joined("x-nope", PHONES[8], "nope", now - timedelta(days=1)),
    ]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


async def write_history(c: Client, clock: Clock, address: str, tmp: Path) -> History:
    """The mixed history, every write RPC and the import CLI among it."""
    h = History()
    now = clock.now
    p = PHONES
    await h.write(
        c,
        "SetBrandPolicy",
        api.SetBrandPolicyRequest(request_id=rid(), brand="globex", revoke_all=True),
    )
    methods = [
        lpb.COLLECTION_METHOD_WEB_FORM,
        lpb.COLLECTION_METHOD_KEYWORD_REPLY,
        lpb.COLLECTION_METHOD_PAPER,
        lpb.COLLECTION_METHOD_VERBAL,
        lpb.COLLECTION_METHOD_API_IMPORT,
    ]
    for i, phone in enumerate(p[:8]):
        method = methods[i % len(methods)]
        for brand, campaign in SENDERS:
            at = now - timedelta(hours=48 - i)
            tier = lpb.CONSENT_TIER_PROMOTIONAL
            if campaign in ("alerts", "info") and i % 2:
                tier = lpb.CONSENT_TIER_INFORMATIONAL
            request = opt_in(phone, brand, campaign, at, tier=tier, method=method)
            await h.write(c, "RecordOptIn", request)
            if i == 0:  # a retry of the same request
                await h.write(c, "RecordOptIn", request)
    h.mark()
    # Age verified for one, a location for two.
    await h.write(
        c,
        "RecordAgeVerification",
        api.RecordAgeVerificationRequest(
            request_id=rid(),
            phone=p[0],
            brand="acme",
            method="id_scan",
            verified_21_plus=True,
            occurred_at=ts(now - timedelta(hours=40)),
        ),
    )
    await h.write(
        c,
        "RecordAgeVerification",
        api.RecordAgeVerificationRequest(
            request_id=rid(),
            phone=p[1],
            brand="acme",
            method="id_scan",
            verified_21_plus=True,
            occurred_at=ts(now + timedelta(minutes=3)),  # stamped ahead
        ),
    )
    for phone, region in ((p[2], "CA"), (p[3], "TX")):
        await h.write(
            c,
            "RecordSubscriberLocation",
            api.RecordSubscriberLocationRequest(
                request_id=rid(),
                phone=phone,
                brand="acme",
                region=region,
                occurred_at=ts(now - timedelta(hours=30)),
            ),
        )
    # Sends: single (one retried), batched, with delivery outcomes.
    first = sent(p[0], "acme", "promo", now - timedelta(hours=3))
    await h.write(c, "RecordMessageSent", first)
    await h.write(c, "RecordMessageSent", first)
    for k in range(3):
        await h.write(
            c, "RecordMessageSent", sent(p[1], "acme", "promo", now - timedelta(hours=2, minutes=k))
        )
    await h.write(
        c,
        "RecordDeliveryOutcome",
        api.RecordDeliveryOutcomeRequest(
            request_id=rid(),
            phone=p[0],
            brand="acme",
            message_id=first.message_id,
            outcome=lpb.DELIVERY_OUTCOME_UNDELIVERABLE,
            error_code="30003",
            occurred_at=ts(now - timedelta(hours=2, minutes=50)),
        ),
    )
    batch = api.RecordMessagesSentRequest(
        request_id=rid(),
        brand="globex",
        messages=[
            api.SentMessage(
                phone=phone if j % 2 else f"1{phone[2:]}",  # two spellings
                campaign="deals",
                message_id=f"B{rid()[:12]}",
                kind=lpb.MESSAGE_KIND_REGULAR,
                occurred_at=ts(now - timedelta(hours=5, minutes=j)),
                included_opt_out_language=True,
                identified_sender=True,
            )
            for j, phone in enumerate([p[4], p[4], p[5], p[6]])
        ],
    )
    await h.write(c, "RecordMessagesSent", batch)
    await h.write(c, "RecordMessagesSent", batch)
    # Texts in: STOP, HELP, START, a plain-language one held for review, STOPALL.
    texts = [
        (p[2], ("acme", "promo"), "STOP", timedelta(hours=-4)),
        (p[2], ("acme", "promo"), "START", timedelta(hours=-1)),
        (p[3], ("acme", "alerts"), "HELP", timedelta(hours=-3)),
        (p[3], ("acme", "promo"), "please stop texting me", timedelta(hours=-2)),
        (p[4], ("globex", "deals"), "STOP", timedelta(hours=-6)),
        (p[5], ("globex", "info"), "please stop texting me", timedelta(hours=-1)),
        (p[6], ("acme", "wine"), "STOPALL", timedelta(minutes=-20)),
        (f"({p[7][2:5]}) {p[7][5:8]}-{p[7][8:]}", ("acme", "alerts"), "STOP", timedelta(minutes=2)),
    ]
    for phone, key, body, delta in texts:
        await h.write(c, "HandleInboundMessage", inbound(phone, SENDERS[key], body, now + delta))
    h.mark()
    # Opt-outs: of the brand, of a campaign, backdated below an opt-in, refused (held).
    await h.write(c, "RecordOptOut", opt_out(p[0], "acme", None, now - timedelta(hours=1)))
    await h.write(c, "RecordOptOut", opt_out(p[1], "globex", "info", now - timedelta(hours=50)))
    await h.write(
        c, "RecordOptOut", opt_out(p[7], "acme", "promo", now - timedelta(hours=1), channel=0)
    )
    await h.write(
        c, "RecordOptOut", opt_out(f"1{p[5][2:]}", "acme", "wine", now - timedelta(hours=12))
    )
    await h.write(
        c,
        "RecordReconfirmation",
        api.RecordReconfirmationRequest(
            request_id=rid(),
            phone=p[1],
            brand="globex",
            campaign="info",
            channel=lpb.REVOCATION_CHANNEL_API,
            occurred_at=ts(now - timedelta(hours=10)),
        ),
    )
    await h.write(
        c,
        "RecordReconfirmation",
        api.RecordReconfirmationRequest(
            request_id=rid(),
            phone=p[6],
            brand="globex",
            campaign="info",
            channel=lpb.REVOCATION_CHANNEL_API,
            occurred_at=ts(now - timedelta(hours=2)),
        ),
    )
    # One of the two held plain-language texts resolved, the other left for review.
    consent = await c.GetConsent(
        api.GetConsentRequest(
            phone=p[3], brand="acme", campaign="promo", at_least_as_fresh=h.token.encode()
        )
    )
    for held in consent.pending_revocation_candidates[:1]:
        await h.write(
            c,
            "ResolveRevocationCandidate",
            api.ResolveRevocationCandidateRequest(
                request_id=rid(),
                phone=p[3],
                brand="acme",
                candidate_event_id=held.event.event_id,
                resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                resolved_by="auditor",
                occurred_at=ts(now - timedelta(minutes=30)),
            ),
        )
    # The campaigns redefined: promo's cap lowered, alerts moved to a new number.
    promo, alerts = campaigns(now)[:2]
    promo.policy.daily_cap = 1
    alerts.policy.sender_numbers[:] = ["+12125550409"]
    for redefined in (promo, alerts):
        await h.write(
            c,
            "ChangeCampaignPolicy",
            api.ChangeCampaignPolicyRequest(
                request_id=rid(),
                brand=redefined.brand,
                campaign=redefined.campaign,
                policy=redefined.policy,
                occurred_at=ts(now - timedelta(minutes=90)),
            ),
        )
    # A legal hold placed and released; an erasure, then a new opt-in after it.
    hold = dict(phone=p[6], brand="acme", hold_id="case-1")
    await h.write(
        c,
        "PlaceLegalHold",
        api.PlaceLegalHoldRequest(request_id=rid(), reason="litigation", **hold),
    )
    await h.write(c, "ReleaseLegalHold", api.ReleaseLegalHoldRequest(request_id=rid(), **hold))
    await h.write(
        c,
        "RequestErasure",
        api.RequestErasureRequest(request_id=rid(), phone=p[7], brand="acme", reference="ticket-7"),
    )
    await h.write(c, "RecordOptIn", opt_in(p[7], "acme", "alerts", now - timedelta(minutes=10)))
    h.mark()
    # The import, then the same import again (it writes nothing new).
    acme = TOKENS["acme-app"][0]
    file = export(tmp / "export.csv", now)
    for _ in range(2):
        code, out, err = await import_cli(str(file), "--address", address, token=acme)
        assert code == 1 and "refused" in out, out + err  # its two bad records
        found = [line for line in out.splitlines() if "ledger written up to:" in line]
        if found:
            h.wrote(found[0].split("ledger written up to:")[1].strip())
    return h


def plain(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def answers(
    c: Client, clock: Clock, h: History, live: dict[Any, Any] | None = None
) -> dict[Any, Any]:
    """Everything a reader can ask about the history, keyed by the question; ``live``:
    the answers before, whose watches say how many changes to wait for."""
    got: dict[Any, Any] = {}
    fresh = h.token.encode()
    now = clock.now
    for brand, campaign in SENDERS:
        for delta in MOMENTS:
            at = {} if not delta else {"at": ts(now + delta)}
            for kind in KINDS if not delta else KINDS[:1]:
                asked = dict(brand=brand, campaign=campaign, message_kind=kind, **at)
                batch = await c.CanSendBatch(
                    api.CanSendBatchRequest(phones=PHONES, at_least_as_fresh=fresh, **asked)
                )
                got["CanSendBatch", brand, campaign, delta, kind] = plain(batch)
                singles = await asyncio.gather(
                    *(
                        c.CanSend(api.CanSendRequest(phone=p, at_least_as_fresh=fresh, **asked))
                        for p in PHONES
                    )
                )
                for phone, r in zip(PHONES, singles, strict=True):
                    got["CanSend", phone, brand, campaign, delta, kind] = plain(r)
            if delta > timedelta(0):
                continue
            for known in (*h.known, now):
                then = await asyncio.gather(
                    *(
                        c.CanSendAsOf(
                            api.CanSendAsOfRequest(
                                phone=p,
                                brand=brand,
                                campaign=campaign,
                                at=ts(now + delta),
                                known_at=ts(known),
                                at_least_as_fresh=fresh,
                            )
                        )
                        for p in PHONES
                    )
                )
                for phone, r in zip(PHONES, then, strict=True):
                    got["CanSendAsOf", phone, brand, campaign, delta, known] = plain(r)
        for phone in PHONES:
            g = await c.GetConsent(
                api.GetConsentRequest(
                    phone=phone, brand=brand, campaign=campaign, at_least_as_fresh=fresh
                )
            )
            got["GetConsent", phone, brand, campaign] = plain(g)
        window = dict(start_time=ts(now + WINDOW[0]), end_time=ts(now + WINDOW[1]))
        got["GetCampaignHealth", brand, campaign] = plain(
            await c.GetCampaignHealth(
                api.GetCampaignHealthRequest(
                    brand=brand, campaign=campaign, at_least_as_fresh=fresh, **window
                )
            )
        )
        got["GetOptOutRate", brand, campaign] = plain(
            await c.GetOptOutRate(
                api.GetOptOutRateRequest(
                    brand=brand, campaign=campaign, at_least_as_fresh=fresh, **window
                )
            )
        )
        swept = []
        async for page in c.stub.SweepCampaign(
            api.SweepCampaignRequest(
                brand=brand, campaign=campaign, at_least_as_fresh=fresh, **window
            ),
            metadata=[("authorization", f"Bearer {c.token}")],
            timeout=30,
        ):
            swept.append(plain(page))
        got["SweepCampaign", brand, campaign] = swept
    for brand in ("acme", "globex"):
        window = dict(start_time=ts(now + WINDOW[0]), end_time=ts(now + WINDOW[1]))
        got["GetOptOutRate", brand] = plain(
            await c.GetOptOutRate(
                api.GetOptOutRateRequest(brand=brand, at_least_as_fresh=fresh, **window)
            )
        )
        for overdue in (False, True):
            queue = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(
                    brand=brand, overdue_only=overdue, at_least_as_fresh=fresh
                )
            )
            # In the order the view applied them (the API says so): a rebuild applies
            # the partitions' replies interleaved anew, so only the order may differ.
            got["ListRevocationCandidates", brand, overdue] = sorted(
                zip(map(plain, queue.candidates), map(plain, queue.deadlines), strict=True),
                key=lambda pair: pair[0]["event"]["event_id"],
            )
        for phone in PHONES:
            packet = await c.GetProofPacket(
                api.GetProofPacketRequest(phone=phone, brand=brand, at_least_as_fresh=fresh)
            )
            got["GetProofPacket", phone, brand] = plain(packet.packet)
        key = ("WatchConsentChanges", brand)
        got[key] = await watched(c, brand, None if live is None else len(live[key]))
    for phone in PHONES:
        listed = await c.ListEvents(api.ListEventsRequest(phone=phone, at_least_as_fresh=fresh))
        got["ListEvents", phone] = plain(listed)
    return got


async def watched(c: Client, brand: str, expected: int | None = None) -> list[Any]:
    """WatchConsentChanges of ``brand`` from the start, until it goes quiet: for 2 s,
    or, once the ``expected`` count of changes came, for a moment (any more is a
    difference)."""
    seen: list[Any] = []
    call = c.stub.WatchConsentChanges(
        api.WatchConsentChangesRequest(brand=brand, include_messages=True),
        metadata=[("authorization", f"Bearer {c.token}")],
    )
    try:
        while True:
            try:
                quiet = 0.3 if expected is not None and len(seen) >= expected else 2
                change = await asyncio.wait_for(call.read(), quiet)
            except TimeoutError:
                break
            if change is grpc.aio.EOF:
                break
            seen.append(plain(change))
    finally:
        call.cancel()
    return seen


def differences(before: dict[Any, Any], after: dict[Any, Any]) -> list[str]:
    """The answers that changed, each read without what is fresh per call."""
    changed = []
    for key in before:
        a, b = unstamped(before[key]), unstamped(after.get(key))
        if a != b:
            changed.append(f"{key}:\n  before {a}\n  after  {b}")
    return changed


_PER_CALL = {"consistency_token", "generated_at", "served_at"}


def unstamped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: unstamped(v) for k, v in value.items() if k not in _PER_CALL}
    if isinstance(value, list):
        return [unstamped(v) for v in value]
    return value


def rebuild(settings: Settings, *options: str) -> subprocess.Popen[str]:
    """``consent-ledger rebuild`` of the service's ledger and view, as its operator
    runs it: a process of its own."""
    assert settings.tokens_file is not None
    if settings.kafka is not None:
        env = rebuild_env(settings.kafka, settings.postgres_dsn, settings.tokens_file.parent)
    else:  # the embedded default's ledger: a table in the view's PostgreSQL
        env = {
            **os.environ,
            "CONSENT_LEDGER": "postgres",
            "CONSENT_POSTGRES_DSN": settings.postgres_dsn,
            "CONSENT_AUTH_TOKENS_FILE": str(settings.tokens_file),
            "CONSENT_DATA_DIR": str(settings.tokens_file.parent / "rebuild"),
        }
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "rebuild", "--quiet", *options],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def finished(process: subprocess.Popen[str]) -> None:
    out, err = await asyncio.to_thread(process.communicate, timeout=300)
    assert process.returncode == 0, out + err


async def killed_partway(settings: Settings, total: int) -> None:
    """A rebuild of small batches killed once it has applied some of the ``total``
    events and not all."""
    first = rebuild(settings, "--batch-size", "2")
    deadline = time.monotonic() + 120
    while await applied(settings.postgres_dsn) in (0, total):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # so that it cannot finish before the kill
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.communicate, timeout=60)
    assert 0 < await applied(settings.postgres_dsn) < total


async def test_every_answer_is_the_same_after_each_way_of_rebuilding(
    tmp_path: Path, postgres_dsn: str, kafka_bootstrap: str
) -> None:
    clock = Clock()
    settings = kafka_service_settings(tmp_path, postgres_dsn, kafka_bootstrap)
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await defined(runtime, campaigns(clock.now))
        h = await write_history(c, clock, runtime.address, tmp_path)
        live = await answers(c, clock, h)
    total = await applied(settings.postgres_dsn)
    allowed = sum(v.get("allowed", False) for k, v in live.items() if k[0] == "CanSend")
    assert 0 < allowed < sum(k[0] == "CanSend" for k in live)  # a history worth comparing

    ways = {
        "restarted": None,
        "rebuilt": lambda: finished(rebuild(settings)),
        "rebuilt --workers 2": lambda: finished(rebuild(settings, "--workers", "2")),
        "killed, rebuilt again": lambda: killed_partway(settings, total),
    }
    for way, done in ways.items():
        if done is not None:
            await done()
        if way.startswith("killed"):
            await finished(rebuild(settings))
        async with running(settings, clock) as runtime, client(runtime.address) as c:
            again = await answers(c, clock, h, live)
        changed = differences(live, again)
        assert not changed, f"{way}: {len(changed)} answers changed\n" + "\n".join(changed[:20])
