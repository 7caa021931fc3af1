"""Reply-order probe (not part of the suite: run it by name, ``pytest
tests/e2e/probe_reply_order.py -s``). Small recent histories of one number around the
replies a gateway may record before the text they answer (a HELP's reply, an opt-out's
confirmation, a START's), on campaigns with a frequency cap of one or two a day, a
daily cap, a short reply window, rules changed between the facts; each delivered in
every order of arrival (sends by one call or batched), each order on a number of its
own (and, for a history that changes the rules, on a campaign of its own). Every
order's answers (CanSend and CanSendBatch for each reply kind, the sweep's findings,
the proof packet) are set against the facts' own order: an order that allows what the
facts in order deny, or owes less (opt-out language, sender identification), is
listed ALLOWS, one that denies more DENIES. Summary to ``PROBE_OUT``
(/tmp/probe_reply_order_<ledger>.txt), every reading as JSON beside it.

Knobs (environment): PROBE_LEDGERS (``embedded,kafka``), PROBE_HISTORIES (names,
comma separated)."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from tests.e2e.harness import (
    Clock,
    client,
    define,
    defined,
    imported,
    inbound,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
    sent,
    service_settings,
    ts,
)
from tests.e2e.test_write_paths_agree import Ledger, leaves_apart, normalized, packet

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = Duration(seconds=86400)
NUMBERS = {
    "cap1": "+12125557801",
    "cap2": "+12125557802",
    "daily": "+12125557803",
    "all1": "+12125557804",
}
RULES: dict[str, dict[str, Any]] = {
    # A cap of one a day and a reply window of two minutes (the longest is five).
    "cap1": dict(
        frequency_caps=[lpb.FrequencyCap(limit=1, window=DAY)],
        opt_out_confirmation_window=Duration(seconds=120),
    ),
    "cap2": dict(frequency_caps=[lpb.FrequencyCap(limit=2, window=DAY)]),
    "daily": dict(daily_cap=1, opt_out_confirmation_window=Duration(seconds=120)),
    # A cap of one a day under the revoke-all rule: an opt-out of cap2 revokes it too.
    "all1": dict(frequency_caps=[lpb.FrequencyCap(limit=1, window=DAY)], revoke_all=True),
}
KINDS = {
    "regular": lpb.MESSAGE_KIND_REGULAR,
    "help": lpb.MESSAGE_KIND_HELP_REPLY,
    "optout-conf": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    "optin-conf": lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
    "talk": lpb.MESSAGE_KIND_CONVERSATION_REPLY,
}
SENDS = {
    "help": lpb.MESSAGE_KIND_HELP_REPLY,
    "conf": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
    "sconf": lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
    "send": lpb.MESSAGE_KIND_REGULAR,
    "bare": lpb.MESSAGE_KIND_REGULAR,  # without opt-out language
    "talk": lpb.MESSAGE_KIND_CONVERSATION_REPLY,
}
# The campaign a history whose rules change between the facts is given, per order.
WIN = "win"

# A fact: (kind, minutes before the service's now). Kinds: in:<c>; a text
# HELP:<c>, STOP:<c>, STOPALL:<c>, START:<c>, hi:<c> (a question) to <c>'s number; a
# send of <c>: help:<c> (a HELP's reply), conf:<c> (an opt-out's confirmation),
# sconf:<c> (a START's), talk:<c> (a conversation reply), send:<c> (regular), bare:<c>
# (regular, no opt-out language); imp:<c> (an opt-out of <c> imported), impall:<c> (one
# of the brand imported, <c> naming nothing); rules:<c>:<s> (ChangeCampaignPolicy: reply window of
# s seconds), crules:<c>:<s> (conversation window of s seconds). Listed in the facts'
# own order; one marked "=" first is delivered first in every order.
HISTORIES: dict[str, list[tuple[str, float]]] = {
    "help-reply-send": [("in:cap1", 60), ("HELP:cap1", 4), ("help:cap1", 3), ("send:cap1", 2)],
    "help-reply-out-of-window-send": [
        ("in:cap1", 60),
        ("HELP:cap1", 6),
        ("help:cap1", 3),
        ("send:cap1", 2),
    ],
    "help-reply-cap2": [("in:cap2", 60), ("HELP:cap2", 4), ("help:cap2", 3), ("send:cap2", 2)],
    "help-reply-daily": [("in:daily", 60), ("HELP:daily", 4), ("help:daily", 3)],
    "help-reply-daily-late": [("in:daily", 60), ("HELP:daily", 5), ("help:daily", 2)],
    "two-helps-one-reply": [("in:cap1", 60), ("HELP:cap1", 5), ("HELP:cap1", 4), ("help:cap1", 3)],
    "one-help-two-replies": [
        ("in:cap2", 60),
        ("HELP:cap2", 5),
        ("help:cap2", 4),
        ("help:cap2", 3),
    ],
    "one-help-two-replies-cap1": [
        ("in:cap1", 60),
        ("HELP:cap1", 5),
        ("help:cap1", 4.5),
        ("help:cap1", 4),
    ],
    "reply-stamped-before-help": [("in:cap1", 60), ("help:cap1", 5), ("HELP:cap1", 4)],
    "help-bare-reply": [("in:cap2", 60), ("HELP:cap2", 4), ("help:cap2", 3)],
    "stop-conf-in-send": [
        ("in:cap1", 60),
        ("STOP:cap1", 6),
        ("conf:cap1", 5),
        ("in:cap1", 2),
    ],
    "stop-conf-late-in": [
        ("in:cap1", 60),
        ("STOP:cap1", 8),
        ("conf:cap1", 5),
        ("in:cap1", 2),
    ],
    "stopall-conf-in": [
        ("in:cap1", 60),
        ("in:cap2", 60),
        ("STOPALL:cap1", 6),
        ("conf:cap1", 5),
        ("in:cap1", 2),
    ],
    "stop-conf-cap2-in": [
        ("in:cap2", 60),
        ("STOP:cap2", 6),
        ("conf:cap2", 5),
        ("in:cap2", 3),
        ("send:cap2", 2),
    ],
    "stop-two-confs-in": [
        ("in:cap2", 60),
        ("STOP:cap2", 6),
        ("conf:cap2", 5),
        ("conf:cap2", 4),
        ("in:cap2", 2),
    ],
    "two-stops-conf-in": [
        ("in:cap1", 60),
        ("STOP:cap1", 7),
        ("STOP:cap1", 6),
        ("conf:cap1", 5.5),
        ("in:cap1", 2),
    ],
    "stop-daily-conf-in": [
        ("in:daily", 60),
        ("STOP:daily", 6),
        ("conf:daily", 5),
        ("in:daily", 2),
    ],
    "stop-start-conf": [("in:cap1", 60), ("STOP:cap1", 8), ("START:cap1", 5), ("sconf:cap1", 4)],
    "stop-conf-start-sconf": [
        ("in:cap2", 60),
        ("STOP:cap2", 8),
        ("conf:cap2", 7),
        ("START:cap2", 5),
        ("sconf:cap2", 4),
    ],
    "help-send-reply": [("in:cap2", 60), ("HELP:cap2", 4), ("send:cap2", 3.5), ("help:cap2", 3)],
    "first-help-reply-bare": [
        ("in:cap2", 60),
        ("HELP:cap2", 4),
        ("help:cap2", 3),
        ("bare:cap2", 2),
    ],
    "window-shortened": [
        ("in:win", 60),
        ("HELP:win", 4),
        ("rules:win:60", 3.5),
        ("help:win", 3),
    ],
    "window-lengthened": [
        ("in:win", 60),
        ("rules:win:300", 10),
        ("HELP:win", 4),
        ("help:win", 1),
    ],
    "window-shortened-after": [
        ("in:win", 60),
        ("HELP:win", 4),
        ("help:win", 3),
        ("rules:win:30", 2),
    ],
    "help-window-shortened-late": [
        ("in:win", 60),
        ("HELP:win", 4),
        ("rules:win:30", 3.5),
        ("help:win", 3),
    ],
    "two-helps-apart-one-reply": [
        ("in:cap1", 60),
        ("HELP:cap1", 6),
        ("HELP:cap1", 4),
        ("help:cap1", 3),
    ],
    "stop-start-sconf-bare": [
        ("in:cap2", 60),
        ("STOP:cap2", 8),
        ("START:cap2", 5),
        ("sconf:cap2", 4),
        ("bare:cap2", 2),
    ],
    "help-reply-stop-conf-in": [
        ("=in:cap2", 60),
        ("HELP:cap2", 9),
        ("help:cap2", 8),
        ("STOP:cap2", 6),
        ("conf:cap2", 5),
        ("in:cap2", 2),
    ],
    "talk-window-shortened": [
        ("in:win", 60),
        ("hi:win", 4),
        ("crules:win:30", 3.5),
        ("talk:win", 3),
    ],
    "talk-stop-inside": [
        ("in:cap1", 60),
        ("hi:cap1", 6),
        ("STOP:cap1", 5.5),
        ("talk:cap1", 5),
        ("in:cap1", 2),
    ],
    "talk-stop-inside-replaced": [
        ("=in:cap1", 60),
        ("=hi:cap1", 6),
        ("STOP:cap1", 5.5),
        ("talk:cap1", 5),
        ("in:cap1", 4),
        ("STOP:cap1", 3),
        ("in:cap1", 2),
    ],
    "start-grant-inside-replaced": [
        ("=in:cap1", 60),
        ("=STOP:cap1", 8),
        ("START:cap1", 6),
        ("in:cap1", 5.5),
        ("sconf:cap1", 5),
        ("in:cap1", 3),
    ],
    "start-stop-inside": [
        ("=in:cap1", 60),
        ("STOP:cap1", 8),
        ("START:cap1", 6),
        ("STOP:cap1", 5.5),
        ("sconf:cap1", 5),
        ("in:cap1", 2),
    ],
    "talk-before-hi": [("in:win", 60), ("hi:win", 4), ("talk:win", 3)],
    "talk-window-lengthened": [
        ("=in:win", 60),
        ("crules:win:60", 30),
        ("hi:win", 4),
        ("crules:win:600", 3.5),
        ("talk:win", 2),
    ],
    "sconf-window-lengthened": [
        ("=in:win", 60),
        ("STOP:win", 8),
        ("rules:win:300", 7),
        ("START:win", 5),
        ("sconf:win", 2),
    ],
    "conf-window-lengthened-start": [
        ("=in:win", 60),
        ("STOP:win", 9),
        ("rules:win:300", 8.5),
        ("conf:win", 6),
        ("START:win", 5),
    ],
    "start-other-stop-inside": [
        ("=in:all1", 60),
        ("=STOP:all1", 8),
        ("START:all1", 6),
        ("STOP:cap2", 5.5),
        ("sconf:all1", 5),
        ("in:all1", 2),
    ],
    "talk-two-other-stops": [
        ("=in:all1", 60),
        ("hi:all1", 6),
        ("STOP:cap2", 5.5),
        ("talk:all1", 5),
        ("STOP:cap2", 3),
        ("in:all1", 2),
    ],
    "start-two-other-stops": [
        ("=in:all1", 60),
        ("=STOP:all1", 8),
        ("START:all1", 6),
        ("STOP:cap2", 5.5),
        ("sconf:all1", 5),
        ("STOP:cap2", 3),
        ("in:all1", 2),
    ],
    "start-grant-inside": [
        ("=in:cap1", 60),
        ("=STOP:cap1", 8),
        ("START:cap1", 6),
        ("in:cap1", 5.5),
        ("sconf:cap1", 5),
    ],
    "start-stopall-start-inside": [
        ("=in:cap1", 60),
        ("=STOPALL:cap1", 8),
        ("START:cap1", 6),
        ("START:cap2", 5.5),
        ("sconf:cap1", 5),
    ],
    "talk-grant-inside": [("=in:cap1", 60), ("hi:cap1", 6), ("in:cap1", 5.5), ("talk:cap1", 5)],
    "stop-import-inside-conf": [
        ("=in:cap1", 60),
        ("STOP:cap1", 6),
        ("imp:cap1", 5.5),
        ("conf:cap1", 5),
        ("in:cap1", 2),
    ],
    "stop-import-all-inside-conf": [
        ("=in:cap1", 60),
        ("STOP:cap1", 6),
        ("impall:cap1", 5.5),
        ("conf:cap1", 5),
        ("in:cap1", 2),
    ],
    "stop-conf-window-shortened": [
        ("in:win", 60),
        ("STOP:win", 6),
        ("rules:win:30", 5.5),
        ("conf:win", 5),
        ("in:win", 2),
    ],
}


def campaigns_of(history: list[tuple[str, float]]) -> list[str]:
    return sorted({k.split(":")[1] for k, _ in history})


def orders_of(history: list[tuple[str, float]]) -> list[tuple[int, ...]]:
    """Every order of arrival of ``history``'s facts, those marked "=" first."""
    fixed = tuple(i for i, (k, _) in enumerate(history) if k.startswith("="))
    rest = [i for i in range(len(history)) if i not in fixed]
    return [fixed + order for order in itertools.permutations(rest)]


async def deliver(
    led: Ledger, admin: Any, phone: str, kind: str, at: datetime, turn: int, names: dict
) -> str:
    what, _, rest = kind.lstrip("=").partition(":")
    campaign, _, arg = rest.partition(":")
    name = names.get(campaign, campaign)
    try:
        if what == "in":
            led.wrote(await led.c.RecordOptIn(opt_in(phone, "acme", name, at)))
        elif what in ("imp", "impall"):
            stop = opt_out(phone, "acme", name if what == "imp" else None, at)
            answer = led.wrote(await imported(led.c, api.ImportRecord(opt_out=stop)))
            assert not answer.refusals, answer
        elif what in ("HELP", "STOP", "STOPALL", "START", "hi"):
            to = NUMBERS.get(name) or names["number"]
            body = "hi, what are your hours?" if what == "hi" else what
            led.wrote(await led.c.HandleInboundMessage(inbound(phone, to, body, at)))
        elif what in ("rules", "crules"):
            window = "opt_out_confirmation_window" if what == "rules" else "conversation_window"
            policy = lpb.CampaignPolicy(
                sender_numbers=[names["number"]],
                frequency_caps=[lpb.FrequencyCap(limit=1, window=DAY)],
                **{window: Duration(seconds=int(arg))},
            )
            await admin.ChangeCampaignPolicy(
                api.ChangeCampaignPolicyRequest(
                    request_id=uuid.uuid4().hex, brand="acme", campaign=name,
                    policy=policy, occurred_at=ts(at),
                )
            )  # fmt: skip
        else:
            mkind = SENDS[what]
            language = what != "bare"
            frm = NUMBERS.get(name) or names["number"]
            request = sent(
                phone, "acme", name, at, kind=mkind, from_number=frm,
                included_opt_out_language=language,
            )  # fmt: skip
            if turn % 2:
                led.wrote(await led.c.RecordMessageSent(request))
            else:
                keep = ("phone", "campaign", "message_id", "kind", "occurred_at", "from_number")
                one = api.SentMessage(**{k: getattr(request, k) for k in keep})
                one.included_opt_out_language = language
                one.identified_sender = True
                led.wrote(
                    await led.c.RecordMessagesSent(
                        api.RecordMessagesSentRequest(
                            request_id=uuid.uuid4().hex, brand="acme", messages=[one]
                        )
                    )
                )
        return "ok"
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()[:200]}"


async def readings(led: Ledger, phone: str, campaigns: list[str], names: dict) -> dict[str, Any]:
    said: dict[str, Any] = {}
    for campaign in campaigns:
        name = names.get(campaign, campaign)
        for label, kind in KINDS.items():
            ask = dict(phone=phone, brand="acme", campaign=name, at_least_as_fresh=led.fresh())
            one = await led.c.CanSend(api.CanSendRequest(**ask, message_kind=kind))
            batch = await led.c.CanSendBatch(
                api.CanSendBatchRequest(
                    phones=[phone], brand="acme", campaign=name, message_kind=kind,
                    at_least_as_fresh=led.fresh(),
                )
            )  # fmt: skip
            (d,) = batch.decisions
            said[f"{campaign} {label}"] = {
                "allowed": one.allowed,
                "reason": api.Reason.Name(one.reason),
                "obligations": sorted(api.Obligation.Name(o) for o in one.obligations),
                "batch": (d.allowed, api.Reason.Name(d.reason)),
            }
        said[f"packet {campaign}"] = judged(await packet(led, phone, name))
    return normalized(said, {phone: "<phone>", **{v: k for k, v in names.items() if k != "number"}})


async def sweep(led: Ledger, name: str, now: datetime) -> dict[str, list[Any]]:
    swept: dict[str, list[Any]] = {}
    async for part in led.c.stub.SweepCampaign(
        api.SweepCampaignRequest(
            brand="acme", campaign=name, start_time=ts(now - timedelta(days=2)),
            end_time=ts(now), at_least_as_fresh=led.fresh(),
        ),
        metadata=[("authorization", f"Bearer {led.c.token}")], timeout=600,
    ):  # fmt: skip
        if part.HasField("finding"):
            f = part.finding
            swept.setdefault(f.phone, []).append(
                (
                    f.occurred_at.ToDatetime().isoformat(),
                    sorted(api.SweepFindingKind.Name(k) for k in f.kinds),
                    api.Reason.Name(f.reason),
                )
            )
    return swept


def judged(p: dict[str, Any]) -> dict[str, Any]:
    """What a proof packet judges: each send's decision (in hindsight when it has one)
    and unmet obligations, each opt-in's first message, each text's answer."""
    sends = {}
    for m in p.get("messages", []):
        d = m.get("hindsight") or m["decision"]
        at = m["event"]["occurred_at"]
        sends[f"{at} {m['kind']}"] = (d["allowed"], d["reason"], m.get("unmet_obligations"))
    firsts = [
        ((o.get("first_message") or {}).get("event") or {}).get("occurred_at")
        for o in p.get("opt_ins", [])
    ]
    texts = [
        (r["event"]["occurred_at"], r.get("read_as"), bool(r.get("reply_sent")))
        for r in p.get("replies", [])
    ]
    return {"sends": sends, "first messages": firsts, "texts": sorted(texts)}


def compare(said: dict[str, Any], base: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(allows more, denies more) of one order's CanSend answers against the order of
    the facts' own times."""
    more, less = [], []
    for key, b in base.items():
        if key.startswith("packet") or key == "sweep":
            continue
        s = said[key]
        if s["batch"][0] != s["allowed"]:
            more.append(f"{key}: CanSendBatch {s['batch']} but CanSend {s['allowed']}")
        if s["allowed"] and not b["allowed"]:
            more.append(f"{key}: ALLOWS ({s['reason']}), in order {b['reason']}")
        elif b["allowed"] and not s["allowed"]:
            less.append(f"{key}: denies ({s['reason']}), in order allowed")
        elif s["allowed"] and b["allowed"]:
            owed, owed_in_order = set(s["obligations"]), set(b["obligations"])
            if owed_in_order - owed:
                more.append(f"{key}: owes less {sorted(owed_in_order - owed)}")
            if owed - owed_in_order:
                less.append(f"{key}: owes more {sorted(owed - owed_in_order)}")
        elif s["reason"] != b["reason"]:
            less.append(f"{key}: denied {s['reason']}, in order {b['reason']}")
    return more, less


@pytest.mark.parametrize("ledger", os.environ.get("PROBE_LEDGERS", "embedded,kafka").split(","))
async def test_probe(ledger, postgres_server, kafka_bootstrap, tmp_path):
    clock = Clock(noon_in_los_angeles())
    first = clock.now - timedelta(days=40)
    chosen = os.environ.get("PROBE_HISTORIES")
    names = chosen.split(",") if chosen else list(HISTORIES)
    plans: list[tuple[str, tuple[int, ...], str, dict[str, str]]] = []
    campaigns = [define("acme", c, first, [NUMBERS[c]], **RULES[c]) for c in NUMBERS]
    n = 0
    for name in names:
        history = HISTORIES[name]
        for order in orders_of(history):
            n += 1
            own: dict[str, str] = {}
            if any(k.split(":")[1] == WIN for k, _ in history):
                own = {WIN: f"win{n}", "number": f"+1212556{n:04d}"}
                campaigns.append(
                    define(
                        "acme", own[WIN], first, [own["number"]],
                        frequency_caps=[lpb.FrequencyCap(limit=1, window=DAY)],
                        opt_out_confirmation_window=Duration(seconds=120),
                    )
                )  # fmt: skip
            plans.append((name, order, f"+1415557{n:04d}", own))
    dbname = f"probe_reply_order_{uuid.uuid4().hex[:8]}"
    dsn = await postgres_server.create_database(dbname)
    kafka = (
        kafka_settings(kafka_bootstrap, f"ro-{uuid.uuid4().hex[:8]}.")
        if ledger == "kafka"
        else None
    )
    settings = service_settings(tmp_path, dsn, kafka=kafka)
    results: dict[str, dict[tuple[int, ...], dict[str, Any]]] = {}
    async with running(settings, clock) as runtime:
        await defined(runtime, campaigns)
        async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
            led, aled = Ledger(app), Ledger(admin)
            for turn, (name, order, phone, own) in enumerate(plans):
                history = HISTORIES[name]
                got = []
                for j in order:
                    kind, minutes = history[j]
                    at = clock.now - timedelta(minutes=minutes)
                    said = await deliver(led, admin, phone, kind, at, turn + j, own)
                    got.append(f"{kind}@{minutes}:{said}")
                results.setdefault(name, {})[order] = {"wrote": got}
            aled.token = aled.token.merge(led.token)
            swept: dict[str, list[Any]] = {}
            for c in [*NUMBERS, *{o[WIN] for *_, o in plans if o}]:
                swept.update(await sweep(aled, c, clock.now))
            for name, order, phone, own in plans:
                r = results[name][order]
                r["said"] = await readings(aled, phone, campaigns_of(HISTORIES[name]), own)
                r["said"]["sweep"] = sorted(swept.get(phone, []))
    await postgres_server.drop_database(dbname)
    report: list[str] = []
    table: list[str] = []
    for name, runs in results.items():
        in_order = tuple(range(len(HISTORIES[name])))
        base = runs[in_order]["said"]
        report.append(f"== {name} ({len(runs)} orders)  {HISTORIES[name]}")
        report.append(
            "   in order: "
            + "; ".join(
                f"{k} {'ALLOW' if v['allowed'] else v['reason']}"
                + (f" {v['obligations']}" if v["allowed"] else "")
                for k, v in base.items()
                if not k.startswith("packet") and k != "sweep"
            )
        )
        report.append(f"   sweep in order: {base['sweep']}")
        n_more = n_less = 0
        for order, r in runs.items():
            bad = [w for w in r["wrote"] if not w.endswith(":ok")]
            if bad:
                report.append(f"   {order} refused: {bad}")
            more, less = compare(r["said"], base)
            n_more += bool(more)
            n_less += bool(less)
            for m in more:
                report.append(f"   (a) {order}: {m}")
            for m in less:
                report.append(f"   (b) {order}: {m}")
            if r["said"]["sweep"] != base["sweep"]:
                report.append(f"   sweep {order}: {r['said']['sweep']}")
            for key in r["said"]:
                if key.startswith("packet"):
                    diffs = leaves_apart(base[key], r["said"][key])
                    if diffs:
                        report.append(f"   {key} {order}: {len(diffs)} differences")
                        report.extend(f"      {d[:300]}" for d in diffs[:6])
        table.append(f"{name:32} orders {len(runs):4}  (a) {n_more:3}  (b) {n_less:3}")
    out = Path(os.environ.get("PROBE_OUT", f"/tmp/probe_reply_order_{ledger}.txt"))
    out.write_text("\n".join([*table, "", *report]))
    dump = {name: {str(o): r for o, r in runs.items()} for name, runs in results.items()}
    out.with_suffix(".json").write_text(json.dumps(dump, default=str))
    print("\n".join([*table, "", *report]))
