"""One fact, every write path: the same sends recorded one by one
(``RecordMessageSent``), in one ``RecordMessagesSent`` and in two; the same opt-in
with its whole proof by ``RecordOptIn``, by ``ImportConsents`` and by
``consent-ledger import`` from CSV and from JSON Lines; the same opt-out (of one
campaign, of every campaign, a STOPALL filed under one, one to a campaign under the
revoke-all rule, one of every campaign after a live one was held for review) by
``RecordOptOut``, by an inbound text and by an import (``ImportConsents``, the CLI
from CSV and JSON Lines). Each path writes for a number (and campaigns) of its
own, and every reader must then say the same of each: CanSend, CanSendBatch and
CanSendAsOf (caps, the conversation window, quiet hours, each message kind),
GetConsent, ListEvents' contents, campaign health and the proof packet, on real
Kafka and on the embedded default, and the two ledgers alike. But for what an
import's opt-out is: marked imported, it owes no confirmation from this service."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import sys
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict

from ledger.ports import ConsistencyToken
from tests.e2e.harness import (
    TOKENS,
    Client,
    Clock,
    client,
    define,
    held_info,
    imported,
    inbound,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    serving,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]

DAY = Duration(seconds=86400)
SEND_PATHS = ("single", "batch", "split")
SEND_NUMBERS = {p: f"+1415555{4101 + i:04d}" for i, p in enumerate(SEND_PATHS)}
PROMO_FROM = {p: f"+1212555{4101 + i:04d}" for i, p in enumerate(SEND_PATHS)}
CHAT_FROM = {p: f"+1212555{4201 + i:04d}" for i, p in enumerate(SEND_PATHS)}

OPT_IN_PATHS = ("write", "import", "csv", "jsonl")
OPT_IN_NUMBERS = {p: f"+1415555{4301 + i:04d}" for i, p in enumerate(OPT_IN_PATHS)}

OPT_OUT_CASES = {
    # Each case: the paths that record it, each for a number of its own.
    "one campaign": ("write", "inbound", "import", "csv"),
    "every campaign": ("write", "inbound", "import", "csv", "jsonl"),
    "STOPALL under one": ("write", "import", "csv"),
    # An opt-out of every campaign after one refused for its details (held for
    # review), then a fresh opt-in to promo.
    "every campaign, one held before": ("write", "inbound", "import", "csv"),
    # A STOP to a campaign that honours the revoke-all rule (vip): it ends vip
    # alone; a STOP to promo ends vip too ("one campaign").
    "revoke-all campaign": ("write", "inbound", "import", "csv"),
}
OPT_OUT_CAMPAIGN = {
    "one campaign": "promo",
    "STOPALL under one": "promo",
    "revoke-all campaign": "vip",
}
"""The campaign each case's opt-out names (none: every campaign)."""
CAMPAIGNS_OF = {
    "one campaign": ("promo", "news", "vip"),
    "revoke-all campaign": ("promo", "news", "vip"),
}
"""The campaigns each case's numbers opt in to and are read for (else PROMO_NEWS)."""
PROMO_NEWS = ("promo", "news")
OPT_OUT_NUMBERS = {
    (case, path): f"+1415555{4400 + 10 * c + i:04d}"
    for c, (case, paths) in enumerate(OPT_OUT_CASES.items())
    for i, path in enumerate(paths)
}
PROMO_SENDER, NEWS_SENDER, VIP_SENDER = "+12125554301", "+12125554302", "+12125554303"

PROOF = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "postal_address": "1 Main St, Springfield",
    "ip_address": "203.0.113.7",
    "collection_detail": "spring sign-up form, checkbox unticked by default",
    "form_url": "https://acme.example/join?utm=spring",
    "consent_text": "Yes, text me Acme offers. Msg&data rates may apply. Reply STOP to cancel.",
    "consent_text_sha256": "ab" * 32,
    "consent_text_version": "v3",
    "screenshot_ref": "s3://proofs/form-v3.png",
    "screenshot_sha256": "9f" * 32,
    "region": "CA",
}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MESSAGE_ID = re.compile(r"\bSM[0-9a-f]{12}\b")
_UNCOMPARED = {
    # Which request, instance, position or moment of recording, and the proof of
    # the ledger's checkpoints: how a fact was written, not what it says.
    "consistency_token",
    "request_id",
    "request_fingerprint",
    "recorded_by",
    "recorded_at",
    "partition",
    "offset",
    "extra",
    "tamper_evidence",
    "known_at",
    "event_id",
}


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def rid() -> str:
    return uuid.uuid4().hex


def normalized(value: Any, names: dict[str, str]) -> Any:
    """``value`` (a reader's answer as JSON) without what tells one write apart from
    another of the same fact, each of ``names`` (a path's number, campaign) written
    as the name it stands for, event ids as ``<id>``."""
    if isinstance(value, dict):
        return {
            normalized(k, names): normalized(v, names)
            for k, v in value.items()
            if k not in _UNCOMPARED
        }
    if isinstance(value, list):
        return [normalized(v, names) for v in value]
    if isinstance(value, str):
        for real, said in names.items():
            value = value.replace(real, said)
        return _MESSAGE_ID.sub("<message id>", _UUID.sub("<id>", value))
    return value


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


class Ledger:
    """One service, the client writing as acme's app, and the freshest token."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.token = ConsistencyToken({})

    def wrote(self, answer: Any) -> Any:
        token = getattr(answer, "consistency_token", "")
        if token:
            self.token = self.token.merge(ConsistencyToken.decode(token))
        return answer

    def fresh(self) -> str:
        return self.token.encode()


async def can_send(
    led: Ledger,
    phone: str,
    campaign: str,
    *,
    at: datetime | None = None,
    kind: int = lpb.MESSAGE_KIND_REGULAR,
) -> dict[str, Any]:
    ask = dict(phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=led.fresh())
    extra = {} if at is None else {"at": ts(at)}
    one = await led.c.CanSend(api.CanSendRequest(**ask, **extra, message_kind=kind))
    batch = await led.c.CanSendBatch(
        api.CanSendBatchRequest(
            phones=[phone],
            brand="acme",
            campaign=campaign,
            message_kind=kind,
            at_least_as_fresh=led.fresh(),
            **extra,
        )
    )
    said = as_dict(one)
    (decision,) = batch.decisions
    said["CanSendBatch"] = (decision.allowed, api.Reason.Name(decision.reason))
    return said


async def as_of(
    led: Ledger, phone: str, campaign: str, at: datetime, known: datetime, kind: int
) -> dict[str, Any]:
    answer = await led.c.CanSendAsOf(
        api.CanSendAsOfRequest(
            phone=phone,
            brand="acme",
            campaign=campaign,
            at=ts(at),
            known_at=ts(known),
            message_kind=kind,
            at_least_as_fresh=led.fresh(),
        )
    )
    return as_dict(answer)


async def consent_and_events(led: Ledger, phone: str, campaigns: Sequence[str]) -> dict[str, Any]:
    said: dict[str, Any] = {}
    for campaign in campaigns:
        g = await led.c.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=led.fresh()
            )
        )
        said[f"consent {campaign}"] = as_dict(g)
    events = await led.c.ListEvents(
        api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=led.fresh())
    )
    said["events"] = as_dict(events)
    return said


async def packet(led: Ledger, phone: str, campaign: str) -> dict[str, Any]:
    answer = await led.c.GetProofPacket(
        api.GetProofPacketRequest(
            phone=phone,
            brand="acme",
            campaign=campaign,
            format=api.PACKET_FORMAT_JSON,
            at_least_as_fresh=led.fresh(),
        ),
        timeout=60,
    )
    return MessageToDict(answer.packet, preserving_proto_field_name=True)


def leaves_apart(a: Any, b: Any, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ, each place as a path with the two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b), key=str)
            for d in leaves_apart(a.get(k), b.get(k), f"{where}/{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in leaves_apart(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {str(a)[:300]} vs {str(b)[:300]}"]


def differences(said: dict[str, Any]) -> list[str]:
    """Each reading where a path's answer differs from the first path's."""
    (first, expected), *others = said.items()
    return [f"{path} vs {first} {d}" for path, got in others for d in leaves_apart(got, expected)]


# --- sends ---------------------------------------------------------------------------


def sends_campaigns(start: datetime) -> list[api.DefineCampaignRequest]:
    out = []
    for path in SEND_PATHS:
        out.append(
            define(
                "acme",
                f"p-{path}",
                start,
                [PROMO_FROM[path]],
                frequency_caps=[lpb.FrequencyCap(limit=4, window=DAY)],
                quiet_hours=lpb.QuietHours(start_minute_of_day=9 * 60, end_minute_of_day=20 * 60),
            )
        )
        out.append(
            define(
                "acme",
                f"c-{path}",
                start,
                [CHAT_FROM[path]],
                purpose=lpb.CAMPAIGN_PURPOSE_CONVERSATIONAL,
                daily_cap=3,
                conversation_window=Duration(seconds=3600),
            )
        )
    return out


def messages(path: str, t: datetime) -> list[api.SentMessage]:
    """What each path sends, oldest first: two replies to a HELP (only the first
    earns its exemption), two regular messages, and on the conversational campaign a
    reply to the person's text and a regular message."""
    phone = SEND_NUMBERS[path]

    def m(mid: str, campaign: str, kind: int, minutes: int, sender: str) -> api.SentMessage:
        return api.SentMessage(
            phone=phone,
            campaign=f"{campaign}-{path}",
            message_id=mid,
            kind=kind,
            occurred_at=ts(t - timedelta(minutes=minutes)),
            included_opt_out_language=True,
            identified_sender=True,
            from_number=sender,
        )

    chat = m("SM-chat-2", "c", lpb.MESSAGE_KIND_REGULAR, 45, CHAT_FROM[path])
    chat.phone = f"+1 ({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
    return [
        m("SM-help-1", "p", lpb.MESSAGE_KIND_HELP_REPLY, 59, PROMO_FROM[path]),
        m("SM-help-2", "p", lpb.MESSAGE_KIND_HELP_REPLY, 58, PROMO_FROM[path]),
        m("SM-chat-1", "c", lpb.MESSAGE_KIND_CONVERSATION_REPLY, 49, CHAT_FROM[path]),
        chat,
        m("SM-reg-1", "p", lpb.MESSAGE_KIND_REGULAR, 40, PROMO_FROM[path]),
        m("SM-reg-2", "p", lpb.MESSAGE_KIND_REGULAR, 30, PROMO_FROM[path]),
    ]


async def record_sends(led: Ledger, path: str, sends: list[api.SentMessage]) -> None:
    if path == "single":
        for s in sends:
            fields = {f.name: v for f, v in s.ListFields()}
            led.wrote(
                await led.c.RecordMessageSent(
                    api.RecordMessageSentRequest(request_id=rid(), brand="acme", **fields)
                )
            )
        return
    # Newest first: the call's order is not the order they went out. Split, the
    # HELP's first reply goes alone and its second in the next call, which must see
    # it. (Calls recorded out of time order are read in ledger order by the sweep and
    # the packet, as single sends so recorded are: see the README.)
    calls = [sends[::-1]] if path == "batch" else [sends[:1], sends[1:][::-1]]
    for call in calls:
        led.wrote(
            await led.c.RecordMessagesSent(
                api.RecordMessagesSentRequest(request_id=rid(), brand="acme", messages=call)
            )
        )


async def sends_readings(led: Ledger, clock: Clock, path: str) -> dict[str, Any]:
    now = clock.now
    phone = SEND_NUMBERS[path]
    said: dict[str, Any] = {}
    kinds = {
        "regular": lpb.MESSAGE_KIND_REGULAR,
        "help": lpb.MESSAGE_KIND_HELP_REPLY,
        "conversation": lpb.MESSAGE_KIND_CONVERSATION_REPLY,
        "opt-out confirmation": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    }
    for campaign in ("p", "c"):
        for name, kind in kinds.items():
            said[f"{campaign} now {name}"] = await can_send(
                led, phone, f"{campaign}-{path}", kind=kind
            )
            # 21:30 in Los Angeles: p's quiet hours.
            quiet = now.replace(hour=5, minute=30) + timedelta(days=1)
            said[f"{campaign} quiet {name}"] = await can_send(
                led, phone, f"{campaign}-{path}", at=quiet, kind=kind
            )
            # The conversation window (an hour from the text) closed.
            said[f"{campaign} later {name}"] = await can_send(
                led, phone, f"{campaign}-{path}", at=now + timedelta(minutes=15), kind=kind
            )
            for back in (35, 20):
                said[f"{campaign} as of -{back}m {name}"] = await as_of(
                    led, phone, f"{campaign}-{path}", now - timedelta(minutes=back), now, kind
                )
    said.update(await consent_and_events(led, phone, (f"p-{path}", f"c-{path}")))
    health = await led.c.GetCampaignHealth(
        api.GetCampaignHealthRequest(
            brand="acme",
            start_time=ts(now - timedelta(days=1)),
            end_time=ts(now),
            at_least_as_fresh=led.fresh(),
        )
    )
    for campaign in as_dict(health).get("campaigns", []):
        if campaign["campaign"].endswith(f"-{path}"):
            said[f"health {campaign['campaign'][0]}"] = campaign
    for campaign in ("p", "c"):
        call = led.c.stub.SweepCampaign(
            api.SweepCampaignRequest(
                brand="acme",
                campaign=f"{campaign}-{path}",
                start_time=ts(now - timedelta(days=1)),
                end_time=ts(now),
                at_least_as_fresh=led.fresh(),
            ),
            metadata=[("authorization", f"Bearer {led.c.token}")],
            timeout=60,
        )
        said[f"sweep {campaign}"] = [
            as_dict(i.finding) async for i in call if i.HasField("finding")
        ]
        rate = await led.c.GetOptOutRate(
            api.GetOptOutRateRequest(
                brand="acme",
                campaign=f"{campaign}-{path}",
                start_time=ts(now - timedelta(days=1)),
                end_time=ts(now),
                at_least_as_fresh=led.fresh(),
            )
        )
        said[f"opt-out rate {campaign}"] = as_dict(rate)
    said["packet p"] = await packet(led, phone, f"p-{path}")
    said["packet c"] = await packet(led, phone, f"c-{path}")
    return normalized(
        said,
        {
            phone: "<phone>",
            f"p-{path}": "p",
            f"c-{path}": "c",
            PROMO_FROM[path]: "<p-from>",
            CHAT_FROM[path]: "<c-from>",
        },
    )


async def read_each(
    readings: dict[str, dict[str, Any]], moment: str, led: Ledger, clock: Clock
) -> None:
    """Each send path's readings at ``moment``, the paths read at once."""
    said = await asyncio.gather(*(sends_readings(led, clock, p) for p in SEND_PATHS))
    for path, reading in zip(SEND_PATHS, said, strict=True):
        readings[path][moment] = reading


async def sends_scenario(led: Ledger, clock: Clock) -> dict[str, dict[str, Any]]:
    """Each send path's readings, at three moments: the sends recorded, their
    delivery outcomes recorded after, one more regular message sent."""
    t = clock.now
    readings: dict[str, dict[str, Any]] = {p: {} for p in SEND_PATHS}
    for path in SEND_PATHS:
        phone = SEND_NUMBERS[path]
        # The conversational campaign has no opt-in: the person's text opens it.
        led.wrote(
            await led.c.RecordOptIn(opt_in(phone, "acme", f"p-{path}", t - timedelta(hours=2)))
        )
        led.wrote(
            await led.c.HandleInboundMessage(
                inbound(phone, PROMO_FROM[path], "HELP", t - timedelta(minutes=60))
            )
        )
        led.wrote(
            await led.c.HandleInboundMessage(
                inbound(phone, CHAT_FROM[path], "are you open today?", t - timedelta(minutes=50))
            )
        )
        sends = messages(path, t)
        asked = await led.c.CanSend(
            api.CanSendRequest(
                phone=phone, brand="acme", campaign=f"p-{path}", at_least_as_fresh=led.fresh()
            )
        )
        sends[4].relied_on.CopyFrom(
            api.ReliedOnAnswer(
                consistency_token=asked.consistency_token,
                allowed=asked.allowed,
                reason=asked.reason,
                evidence_event_ids=asked.evidence_event_ids,
            )
        )
        await record_sends(led, path, sends)
    await read_each(readings, "sent", led, clock)
    for path in SEND_PATHS:
        for mid, outcome, code in (
            ("SM-reg-1", lpb.DELIVERY_OUTCOME_FAILED, "30003"),
            ("SM-reg-2", lpb.DELIVERY_OUTCOME_DELIVERED, ""),
            ("SM-chat-2", lpb.DELIVERY_OUTCOME_UNDELIVERABLE, "30005"),
        ):
            led.wrote(
                await led.c.RecordDeliveryOutcome(
                    api.RecordDeliveryOutcomeRequest(
                        request_id=rid(),
                        phone=SEND_NUMBERS[path],
                        brand="acme",
                        message_id=mid,
                        outcome=outcome,
                        error_code=code,
                        occurred_at=ts(t - timedelta(minutes=5)),
                    )
                )
            )
    await read_each(readings, "outcomes", led, clock)
    for path in SEND_PATHS:
        one_more = api.SentMessage(
            phone=SEND_NUMBERS[path],
            campaign=f"p-{path}",
            message_id="SM-reg-3",
            kind=lpb.MESSAGE_KIND_REGULAR,
            occurred_at=ts(t - timedelta(minutes=2)),
            included_opt_out_language=True,
            identified_sender=True,
            from_number=PROMO_FROM[path],
        )
        led.wrote(
            await led.c.HandleInboundMessage(
                inbound(SEND_NUMBERS[path], CHAT_FROM[path], "STOP", t - timedelta(minutes=4))
            )
        )
        confirmation = api.SentMessage(
            phone=SEND_NUMBERS[path],
            campaign=f"c-{path}",
            message_id="SM-chat-stop",
            kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
            occurred_at=ts(t - timedelta(minutes=3)),
            identified_sender=True,
            from_number=CHAT_FROM[path],
        )
        after_stop = api.SentMessage(
            phone=SEND_NUMBERS[path],
            campaign=f"c-{path}",
            message_id="SM-chat-after",
            kind=lpb.MESSAGE_KIND_REGULAR,
            occurred_at=ts(t - timedelta(minutes=1)),
            from_number=CHAT_FROM[path],
        )
        calls = "single" if path == "single" else "batch"
        await record_sends(led, calls, [confirmation, one_more, after_stop])
    await read_each(readings, "one more", led, clock)
    return readings


# --- opt-ins -------------------------------------------------------------------------


def opt_in_request(path: str, when: datetime) -> api.RecordOptInRequest:
    proof = lpb.ConsentProof(**PROOF)
    proof.registered_at.FromDatetime(when)
    return api.RecordOptInRequest(
        request_id=f"in-{path}-{rid()[:8]}",
        phone=OPT_IN_NUMBERS[path],
        brand="acme",
        campaign="promo",
        tier=lpb.CONSENT_TIER_PROMOTIONAL,
        method=lpb.COLLECTION_METHOD_WEB_FORM,
        source=lpb.LIST_SOURCE_FIRST_PARTY,
        proof=proof,
        occurred_at=ts(when),
    )


def opt_in_row(path: str, when: datetime) -> dict[str, str]:
    return {
        "type": "opt_in",
        "import_id": f"in-{path}",
        "phone": OPT_IN_NUMBERS[path],
        "brand": "acme",
        "campaign": "promo",
        "occurred_at": iso(when),
        "tier": "promotional",
        "method": "web_form",
        "source": "first_party",
        "proof.registered_at": iso(when),
        **{f"proof.{k}": v for k, v in PROOF.items()},
    }


def opt_out_row(case: str, path: str, when: datetime) -> dict[str, str]:
    row = {
        "type": "opt_out",
        "import_id": f"out-{path}-{OPT_OUT_NUMBERS[case, path]}",
        "phone": OPT_OUT_NUMBERS[case, path],
        "brand": "acme",
        "occurred_at": iso(when),
        "channel": "keyword",
        "text": "STOPALL" if case.startswith(("every", "STOPALL")) else "STOP",
    }
    if case in OPT_OUT_CAMPAIGN:
        row["campaign"] = OPT_OUT_CAMPAIGN[case]
    return row


def write_exports(tmp: Path, when: datetime, out_at: datetime) -> tuple[Path, Path]:
    """The CSV and the JSON Lines export: each its opt-in path's opt-in and its
    opt-out paths' opt-outs."""
    csv_rows = [opt_in_row("csv", when)] + [
        opt_out_row(case, "csv", out_at) for case in OPT_OUT_CASES if "csv" in OPT_OUT_CASES[case]
    ]
    columns = sorted({k for row in csv_rows for k in row})
    exported = tmp / "export.csv"
    with exported.open("w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(csv_rows)
    lines = []
    for row in [opt_in_row("jsonl", when)] + [
        opt_out_row(case, "jsonl", out_at)
        for case in OPT_OUT_CASES
        if "jsonl" in OPT_OUT_CASES[case]
    ]:
        nested = {k: v for k, v in row.items() if not k.startswith("proof.")}
        if any(k.startswith("proof.") for k in row):
            nested["proof"] = {
                k.removeprefix("proof."): v for k, v in row.items() if k.startswith("proof.")
            }
        lines.append(json.dumps(nested))
    jsonl = tmp / "export.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return exported, jsonl


async def import_cli(led: Ledger, address: str, export: Path, token: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "import",
        str(export),
        "--address",
        address,
        env={**os.environ, "CONSENT_TOKEN": token},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode() + err.decode()
    found = re.search(r"ledger written up to: (\S+)", out.decode())
    assert found, out.decode()
    led.token = led.token.merge(ConsistencyToken.decode(found.group(1)))


async def consent_readings(
    led: Ledger, clock: Clock, phone: str, campaigns: Sequence[str], moments: Sequence[datetime]
) -> dict[str, Any]:
    said: dict[str, Any] = {}
    for campaign in campaigns:
        for name, kind in (
            ("regular", lpb.MESSAGE_KIND_REGULAR),
            ("opt-out confirmation", lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION),
        ):
            said[f"{campaign} now {name}"] = await can_send(led, phone, campaign, kind=kind)
            for i, moment in enumerate(moments):
                said[f"{campaign} as of {i} {name}"] = await as_of(
                    led, phone, campaign, moment, clock.now, kind
                )
    said.update(await consent_and_events(led, phone, campaigns))
    for campaign in campaigns:
        said[f"packet {campaign}"] = await packet(led, phone, campaign)
    return normalized(said, {phone: "<phone>"})


async def consent_scenario(
    led: Ledger, clock: Clock, address: str, tmp: Path
) -> dict[str, dict[str, Any]]:
    """Each opt-in path's readings, and each opt-out case's paths' readings."""
    t = clock.now
    when = t - timedelta(days=3)
    out_at = t - timedelta(days=2)
    for (case, _), phone in OPT_OUT_NUMBERS.items():
        for campaign in CAMPAIGNS_OF.get(case, PROMO_NEWS):
            led.wrote(await led.c.RecordOptIn(opt_in(phone, "acme", campaign, when)))
    led.wrote(await led.c.RecordOptIn(opt_in_request("write", when)))
    answer = led.wrote(
        await imported(led.c, api.ImportRecord(opt_in=opt_in_request("import", when)))
    )
    assert (answer.imported, list(answer.refusals)) == (1, []), answer
    for (case, path), phone in OPT_OUT_NUMBERS.items():
        campaign = OPT_OUT_CAMPAIGN.get(case)
        if case == "every campaign, one held before":
            try:
                await led.c.RecordOptOut(
                    opt_out(phone, "acme", "promo", out_at - timedelta(hours=1), channel=0)
                )
                raise AssertionError("an opt-out without a channel was recorded")
            except grpc.aio.AioRpcError as err:
                info = held_info(err)
                assert info is not None, err
                led.token = led.token.merge(ConsistencyToken.decode(info["consistency_token"]))
            # Applied before the opt-out comes (one a moment after it finds it not
            # yet applied, and leaves it to a reviewer, as the README says).
            await led.c.GetConsent(
                api.GetConsentRequest(
                    phone=phone, brand="acme", campaign="promo", at_least_as_fresh=led.fresh()
                )
            )
        text = "STOPALL" if case.startswith(("every", "STOPALL")) else "STOP"
        if path == "write":
            led.wrote(
                await led.c.RecordOptOut(
                    opt_out(
                        phone,
                        "acme",
                        campaign,
                        out_at,
                        channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                        text=text,
                    )
                )
            )
        elif path == "inbound":
            body = "STOPALL" if case.startswith(("every", "STOPALL")) else "STOP"
            to = VIP_SENDER if campaign == "vip" else PROMO_SENDER
            led.wrote(await led.c.HandleInboundMessage(inbound(phone, to, body, out_at)))
        elif path == "import":
            record = opt_out(
                phone, "acme", campaign, out_at, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text=text
            )
            answer = led.wrote(await imported(led.c, api.ImportRecord(opt_out=record)))
            assert (answer.imported, list(answer.refusals)) == (1, []), answer
    exported, jsonl = write_exports(tmp, when, out_at)
    await import_cli(led, address, exported, TOKENS["acme-app"][0])
    await import_cli(led, address, jsonl, TOKENS["acme-app"][0])
    for path in OPT_OUT_CASES["every campaign, one held before"]:
        phone = OPT_OUT_NUMBERS["every campaign, one held before", path]
        again = opt_in(phone, "acme", "promo", t - timedelta(days=1))
        led.wrote(await led.c.RecordOptIn(again))
    moments = [when - timedelta(minutes=1), when, out_at, out_at + timedelta(minutes=10)]
    readings: dict[str, dict[str, Any]] = {}
    asked = [("opt-in", p, OPT_IN_NUMBERS[p], ("promo",)) for p in OPT_IN_PATHS] + [
        (case, p, OPT_OUT_NUMBERS[case, p], CAMPAIGNS_OF.get(case, PROMO_NEWS))
        for case, paths in OPT_OUT_CASES.items()
        for p in paths
    ]
    said = await asyncio.gather(
        *(
            consent_readings(led, clock, phone, campaigns, moments)
            for _, _, phone, campaigns in asked
        )
    )
    for (case, path, _, _), reading in zip(asked, said, strict=True):
        readings.setdefault(case, {})[path] = reading
    return readings


def without_texts(value: Any) -> Any:
    """Readings less what an inbound text adds to its opt-out: the text itself
    (``InboundMessageReceived``, in the events and the packet, and its reply there)
    and the opt-out's ``in_reply_to`` naming it."""
    if isinstance(value, dict):
        return {
            k: without_texts(v) for k, v in value.items() if k not in ("in_reply_to", "replies")
        }
    if isinstance(value, list):
        return [without_texts(v) for v in value if "InboundMessageReceived" not in json.dumps(v)]
    return value


async def scenario(led: Ledger, clock: Clock, address: str, tmp: Path) -> dict[str, Any]:
    return {
        "sends": await sends_scenario(led, clock),
        "consent": await consent_scenario(led, clock, address, tmp),
    }


IMPORTED_PATHS = ("import", "csv", "jsonl")
IMPORTED_DETAIL = "the opt-out was imported"
IMPORTED_HANDLING = re.compile(r"imported: received by another platform[^;]*; ")


def without_import_mark(value: Any) -> Any:
    """An imported opt-out's readings less what says it was imported: its event's
    ``imported`` and the packet's word of it in its handling."""
    if isinstance(value, dict):
        return {
            k: (
                {f: x for f, x in v.items() if f != "imported"}
                if k == "consent_revoked" and isinstance(v, dict)
                else without_import_mark(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [without_import_mark(v) for v in value]
    if isinstance(value, str):
        return IMPORTED_HANDLING.sub("", value)
    return value


def confirmations_apart(paths: dict[str, Any]) -> set[str]:
    """The opt-out confirmation readings an imported path denies for its opt-out
    being imported: a live opt-out's may be allowed there (``check_the_story``)."""
    return {
        k
        for p, readings in paths.items()
        if p in IMPORTED_PATHS
        for k, v in readings.items()
        if k.endswith("opt-out confirmation") and IMPORTED_DETAIL in str(v.get("detail", ""))
    }


def path_differences(said: dict[str, Any]) -> list[str]:
    found = []
    for moment in ("sent", "outcomes", "one more"):
        found += [
            f"sends {moment}: {d}"
            for d in differences({p: said["sends"][p][moment] for p in SEND_PATHS})
        ]
    for case, paths in said["consent"].items():
        if "inbound" in paths:
            paths = {p: without_texts(r) for p, r in paths.items()}
        apart = confirmations_apart(paths)
        paths = {
            p: {
                k: without_import_mark(v) if p in IMPORTED_PATHS else v
                for k, v in r.items()
                if k not in apart
            }
            for p, r in paths.items()
        }
        found += [f"{case}: {d}" for d in differences(paths)]
    return found


def reason(reading: dict[str, Any]) -> tuple[bool, str]:
    return reading.get("allowed", False), reading.get("reason", "")


def exempt(readings: dict[str, Any]) -> dict[str, bool | None]:
    """Each message id's ``exempt`` as ``ListEvents`` gives it."""
    sends = [e["event"].get("message_sent") for e in readings["events"].get("events", [])]
    return {m["message_id"]: m.get("exempt") for m in sends if m}


def batch_apart(said: Any, where: str = "") -> list[str]:
    """Each CanSend answer that its CanSendBatch for the one number contradicts."""
    if not isinstance(said, dict):
        return []
    if "CanSendBatch" in said:
        one, batch = (said.get("allowed", False), said.get("reason")), said["CanSendBatch"]
        return [] if one == tuple(batch) else [f"{where}: {one} vs {batch}"]
    return [d for k, v in said.items() for d in batch_apart(v, f"{where}/{k}")]


def check_the_story(said: dict[str, Any]) -> None:
    """What the first path of each says, so that paths agreeing on nothing pass for
    nothing: the caps, the conversation window, quiet hours, each opt-out's reach."""
    sends = said["sends"]["single"]
    assert reason(sends["sent"]["p now regular"]) == (True, "REASON_CONSENT_ACTIVE")
    assert exempt(sends["sent"])["SM-help-1"] is True
    assert exempt(sends["sent"])["SM-help-2"] is False  # one reply a HELP
    assert reason(sends["sent"]["p quiet regular"])[1] == "REASON_QUIET_HOURS"
    assert reason(sends["sent"]["c now conversation"]) == (True, "REASON_CONVERSATION_REPLY")
    assert reason(sends["sent"]["c later conversation"])[1] == "REASON_CONVERSATION_WINDOW_CLOSED"
    assert sends["outcomes"]["health p"]["counts"]["delivery_errors"] == "1"
    one_more = sends["one more"]
    assert reason(one_more["p now regular"])[1] == "REASON_FREQUENCY_CAP_REACHED"
    assert reason(one_more["c now opt-out confirmation"])[0] is False  # the one was sent
    after = {f["message_id"]: f["kinds"] for f in one_more["sweep c"]}
    assert "SWEEP_FINDING_KIND_AFTER_OPT_OUT" in after["SM-chat-after"], after
    assert one_more["opt-out rate c"]["opt_outs"] == "1"
    consent = said["consent"]
    assert reason(consent["opt-in"]["write"]["promo now regular"])[0] is True
    # Asked at the opt-out's moment, its one confirmation is owed after a live STOP;
    # an imported one was the other platform's to send.
    for case, campaign in (("one campaign", "promo"), ("every campaign", "news")):
        confirming = f"{campaign} as of 2 opt-out confirmation"
        for path, readings in consent[case].items():
            answer = readings[confirming]
            if path in IMPORTED_PATHS:
                assert reason(answer) == (False, "REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED")
                assert IMPORTED_DETAIL in answer["detail"], (case, path, answer)
            else:
                assert reason(answer) == (True, "REASON_OPT_OUT_CONFIRMATION_ALLOWED"), answer
    stood = {
        case: {c: reason(r[f"{c} now regular"])[1] for c in CAMPAIGNS_OF.get(case, PROMO_NEWS)}
        for case, paths in consent.items()
        if case != "opt-in"
        for r in [next(iter(paths.values()))]
    }
    active, revoked = "REASON_CONSENT_ACTIVE", "REASON_REVOKED"
    assert stood == {
        "one campaign": {"promo": revoked, "news": active, "vip": "REASON_REVOKED_BRAND_WIDE"},
        "every campaign": {
            "promo": "REASON_REVOKED_BRAND_WIDE",
            "news": "REASON_REVOKED_BRAND_WIDE",
        },
        "STOPALL under one": {
            "promo": "REASON_REVOKED_BRAND_WIDE",
            "news": "REASON_REVOKED_BRAND_WIDE",
        },
        # The hold resolved "revoked" now: the opt-in since does not come back.
        "every campaign, one held before": {
            "promo": "REASON_REVOKED_BRAND_WIDE",
            "news": "REASON_REVOKED_BRAND_WIDE",
        },
        "revoke-all campaign": {"promo": active, "news": active, "vip": revoked},
    }, stood


async def test_every_write_path_of_a_fact_gives_the_same_answers_on_both_ledgers(
    tmp_path, postgres_dsn, postgres_server, kafka_bootstrap
):
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    start = clock.now - timedelta(days=30)
    campaigns = [
        *sends_campaigns(start),
        define("acme", "promo", start, [PROMO_SENDER]),
        define("acme", "news", start, [NEWS_SENDER]),
        define("acme", "vip", start, [VIP_SENDER], revoke_all=True),
    ]
    name = f"t_paths_e_{uuid.uuid4().hex[:8]}"
    embedded_dsn = await postgres_server.create_database(name)
    said: dict[str, Any] = {}
    try:
        for ledger, bootstrap, dsn in (
            ("kafka", kafka_bootstrap, postgres_dsn),
            ("embedded", None, embedded_dsn),
        ):
            (tmp_path / ledger).mkdir()
            async with AsyncExitStack() as stack:
                runtime = await stack.enter_async_context(
                    serving(
                        tmp_path / ledger,
                        dsn,
                        bootstrap,
                        name="paths",
                        clock=clock,
                        campaigns=campaigns,
                    )
                )
                c = await stack.enter_async_context(client(runtime.address, "acme-app"))
                said[ledger] = await scenario(Ledger(c), clock, runtime.address, tmp_path / ledger)
    finally:
        await postgres_server.drop_database(name)
    check_the_story(said["kafka"])
    found = []
    for ledger, readings in said.items():
        found += [f"{ledger}: {d}" for d in path_differences(readings)]
    found += [f"kafka vs embedded {d}" for d in leaves_apart(said["kafka"], said["embedded"])]
    found += [f"CanSend vs CanSendBatch {d}" for d in batch_apart(said)]
    for line in found[:40]:
        print(line)
    assert not found, "\n".join(found[:40])
