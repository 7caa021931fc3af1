"""Arrival-order probe (not part of the suite: run it by name, ``pytest
tests/e2e/probe_arrival_order.py -s``). Small histories of one number (opt-ins,
opt-outs of a campaign or all, texts, a reconfirmation, sends and replies), each fact
at its own time, delivered in every order of arrival through mixed paths (single
writes, ``ImportConsents`` a record a call, in one message or one stream, the import
CLI, ``RecordMessageSent``/``RecordMessagesSent``), each order on a number of its own;
then every reader (CanSend and CanSendBatch per campaign and reply kind, CanSendAsOf
between the facts known now and in hindsight, GetConsent, ListEvents, the proof
packet) for each, and again after ``consent-ledger rebuild``. It writes a summary
(``PROBE_OUT``, /tmp/probe_arrival_<ledger>.txt: refusals, and any answer the rebuild
changed) and every reading as JSON beside it, to compare the orders with.

Knobs (environment): PROBE_LEDGERS (``embedded,kafka``), PROBE_HISTORIES (names, comma
separated), PROBE_NO_REBUILD, PROBE_REAL_CLOCK (the service's clock 10 minutes past the
real one, so recorded times follow the facts' own, as in production; the suite's clock
runs a day ahead of the broker's stamps, which makes sends "recorded by" every moment),
PROBE_AREA (the numbers' area code: 212 keeps the real clock's hours out of quiet
hours)."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from ledger.ports import ConsistencyToken
from tests.builders import _PROOF_TEXT
from tests.e2e.harness import (
    TOKENS,
    Clock,
    client,
    define,
    defined,
    held_info,
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
from tests.e2e.test_rebuild_answers_alike import finished, rebuild
from tests.e2e.test_write_paths_agree import (
    Ledger,
    as_dict,
    as_of,
    can_send,
    consent_and_events,
    import_cli,
    leaves_apart,
    normalized,
    packet,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMO_FROM, NEWS_FROM, CAPPED_FROM = "+12125557701", "+12125557702", "+12125557703"
VIP_FROM = "+12125557704"
H = timedelta(hours=1)

# A fact: (kind, hours after the history's start). Kinds: in:<c>, out:<c>|out:all,
# stop, start, help, reconf:<c>, send:<c>.
HISTORIES: dict[str, list[tuple[str, float]]] = {
    "in-out-in": [("in:promo", 0), ("out:promo", 2), ("in:promo", 4)],
    "in-stop-start": [("in:promo", 0), ("stop", 2), ("start", 4)],
    "in-outall-innews": [("in:promo", 0), ("out:all", 2), ("in:news", 4)],
    "in-send-out-send": [("in:promo", 0), ("send:promo", 1), ("out:promo", 2), ("send:promo", 3)],
    "tie": [("in:promo", 0), ("out:promo", 0)],
    "tie-stop": [("in:promo", 0), ("stop", 0)],
    "in-stop-help-start": [("in:promo", 0), ("stop", 1), ("help", 2), ("start", 3)],
    "in-reconf-out-in": [("in:promo", 0), ("reconf:promo", 2), ("out:promo", 3), ("in:promo", 4)],
    "in-out-stop": [("in:promo", 0), ("out:all", 1), ("stop", 2)],
    "out-in-start": [("out:all", 0), ("in:promo", 1), ("start", 2)],
    "two-ins-outall": [("in:promo", 0), ("in:news", 1), ("out:all", 2)],
    "in-stop-in": [("in:promo", 0), ("stop", 1), ("in:promo", 2)],
    "in-outall-in-tie": [("in:promo", 0), ("out:all", 1), ("in:promo", 1)],
    "consents-4": [("in:promo", 0), ("out:promo", 1), ("in:promo", 2), ("out:all", 3)],
    "stop-stopall-start": [
        ("in:promo", 0),
        ("in:news", 0),
        ("stop", 1),
        ("stopall", 2),
        ("start", 3),
    ],
    "stopall-stop-start": [("in:promo", 0), ("stopall", 1), ("stop", 2), ("start", 3)],
    "stopall-start-news": [("in:promo", 0), ("in:news", 0), ("stopall", 1), ("start:news", 2)],
    "outall-stopnews-start": [
        ("in:promo", 0),
        ("in:news", 0),
        ("out:all", 1),
        ("stop:news", 2),
        ("start", 3),
    ],
    "ra-stop-start": [("in:vip", 0), ("in:promo", 0), ("stop", 1), ("start:vip", 2)],
    "ra-stop-in": [("in:vip", 0), ("stop", 1), ("in:vip", 2)],
    "ra-out-start": [("in:vip", 0), ("in:promo", 1), ("out:promo", 2), ("start:vip", 3)],
    "ra-start-stop": [("in:vip", 0), ("in:promo", 0), ("start:vip", 1), ("stop", 2)],
    "ra-stopvip-start": [("in:vip", 0), ("in:promo", 0), ("stop:vip", 1), ("start", 2)],
    "held-outall-in": [("in:promo", 0), ("held:promo", 1), ("out:all", 2), ("in:promo", 3)],
    "held-in": [("in:promo", 0), ("held:promo", 1), ("in:promo", 2)],
    "held-stopall-start": [("in:promo", 0), ("held", 1), ("stopall", 2), ("start", 3)],
    "news-promo-tie": [("in:news", 0), ("in:promo", 1), ("out:promo", 1), ("stop", 2)],
}

M = 1 / 60
# Recent histories: hours before the service's now (confirmations, HELP replies and
# caps are answered within minutes or a day of the facts).
RECENT: dict[str, list[tuple[str, float]]] = {
    "r-in-stop": [("in:promo", -1), ("stop", -3 * M)],
    "r-in-stop-conf": [("in:promo", -1), ("stop", -4 * M), ("sendconf:promo", -3 * M)],
    "r-in-out-conf": [("in:promo", -1), ("out:promo", -4 * M), ("sendconf:promo", -3 * M)],
    "r-in-help-reply": [("in:promo", -1), ("help", -4 * M), ("sendhelp:promo", -3 * M)],
    "r-in-help": [("in:promo", -1), ("help", -4 * M)],
    "r-in-stop-start": [("in:promo", -1), ("stop", -6 * M), ("start", -3 * M)],
    "r-cap6": [
        ("in:capped", -5),
        ("send:capped", -3),
        ("send:capped", -2),
        ("out:capped", -1.5),
        ("send:capped", -1),
    ],
    "r-cap": [("in:capped", -5), ("send:capped", -3), ("send:capped", -2), ("send:capped", -1)],
    "r-in-stop-out": [("in:promo", -1), ("stop", -5 * M), ("out:promo", -4 * M)],
    "r-in-stop-conf-start": [
        ("in:promo", -1),
        ("stop", -8 * M),
        ("sendconf:promo", -6 * M),
        ("start", -3 * M),
    ],
}
HISTORIES.update(RECENT)

PATHS = {
    "in": ("write", "import", "cli"),
    "out": ("write", "import", "cli"),
    "send": ("single", "batch"),
}


async def _gen(msgs):
    for m in msgs:
        yield m


def paths_for(history: list[tuple[str, float]], perm_index: int) -> list[str]:
    out = []
    for j, (kind, _) in enumerate(history):
        options = PATHS.get(kind.split(":")[0], ("write",))
        out.append(options[(perm_index + j) % len(options)])
    return out


def csv_rows(rows: list[dict[str, str]], tmp: Path) -> Path:
    import csv

    fields = sorted({k for r in rows for k in r})
    path = tmp / f"{uuid.uuid4().hex}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


async def deliver(
    led: Ledger, address: str, phone: str, kind: str, at: datetime, path: str, tmp: Path
) -> str:
    """Record one fact; returns 'ok' or the refusal."""
    what, _, campaign = kind.partition(":")
    try:
        if what == "in":
            request = opt_in(phone, "acme", campaign, at)
            if path == "write":
                led.wrote(await led.c.RecordOptIn(request))
            elif path == "import":
                a = led.wrote(await imported(led.c, api.ImportRecord(opt_in=request)))
                if a.refusals:
                    return f"refused {list(a.refusals)}"
            else:
                row = {
                    "type": "opt_in",
                    "import_id": uuid.uuid4().hex,
                    "phone": phone,
                    "brand": "acme",
                    "campaign": campaign,
                    "occurred_at": iso(at),
                    "tier": "promotional",
                    "method": "web_form",
                    "proof.registered_at": iso(at),
                    **{f"proof.{k}": v for k, v in _PROOF_TEXT.items()},
                }
                await import_cli(led, address, csv_rows([row], tmp), TOKENS["acme-app"][0])
        elif what == "out":
            c = None if campaign == "all" else campaign
            request = opt_out(
                phone, "acme", c, at, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text="STOP"
            )
            if path == "write":
                led.wrote(await led.c.RecordOptOut(request))
            elif path == "import":
                a = led.wrote(await imported(led.c, api.ImportRecord(opt_out=request)))
                if a.refusals:
                    return f"refused {list(a.refusals)}"
            else:
                row = {
                    "type": "opt_out",
                    "import_id": uuid.uuid4().hex,
                    "phone": phone,
                    "brand": "acme",
                    "occurred_at": iso(at),
                    "channel": "keyword",
                    "text": "STOP",
                }
                if c:
                    row["campaign"] = c
                await import_cli(led, address, csv_rows([row], tmp), TOKENS["acme-app"][0])
        elif what == "held":  # an opt-out refused for a detail (no channel): held
            request = opt_out(phone, "acme", campaign or None, at, channel=0)
            try:
                await led.c.RecordOptOut(request)
            except grpc.aio.AioRpcError as err:
                info = held_info(err)
                if info is None:
                    raise
                led.token = led.token.merge(ConsistencyToken.decode(info["consistency_token"]))
                return "ok"
            return "recorded, not held"
        elif what in ("stop", "start", "help", "stopall", "unstop", "hi"):
            to = {"news": NEWS_FROM, "vip": VIP_FROM}.get(campaign, PROMO_FROM)
            led.wrote(await led.c.HandleInboundMessage(inbound(phone, to, what.upper(), at)))
        elif what == "reconf":
            led.wrote(
                await led.c.RecordReconfirmation(
                    api.RecordReconfirmationRequest(
                        request_id=uuid.uuid4().hex,
                        phone=phone,
                        brand="acme",
                        campaign=campaign,
                        channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                        occurred_at=ts(at),
                    )
                )
            )
        elif what.startswith("send"):
            mkind = {
                "send": lpb.MESSAGE_KIND_REGULAR,
                "sendconf": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
                "sendhelp": lpb.MESSAGE_KIND_HELP_REPLY,
            }[what]
            mid = f"SM{uuid.uuid4().hex[:16]}"
            if path == "single":
                led.wrote(
                    await led.c.RecordMessageSent(
                        sent(
                            phone,
                            "acme",
                            campaign,
                            at,
                            message_id=mid,
                            from_number=CAPPED_FROM if campaign == "capped" else PROMO_FROM,
                            kind=mkind,
                        )
                    )
                )
            else:
                led.wrote(
                    await led.c.RecordMessagesSent(
                        api.RecordMessagesSentRequest(
                            request_id=uuid.uuid4().hex,
                            brand="acme",
                            messages=[
                                api.SentMessage(
                                    phone=phone,
                                    campaign=campaign,
                                    message_id=mid,
                                    kind=mkind,
                                    occurred_at=ts(at),
                                    included_opt_out_language=True,
                                    identified_sender=True,
                                    from_number=CAPPED_FROM if campaign == "capped" else PROMO_FROM,
                                )
                            ],
                        )
                    )
                )
        return "ok"
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()[:200]}"


async def readings(
    led: Ledger, clock: Clock, phone: str, start: datetime, history: list[tuple[str, float]]
) -> dict[str, Any]:
    said: dict[str, Any] = {}
    times = [*sorted({start + timedelta(hours=h) for _, h in history}), clock.now]
    moments = [a + (b - a) / 2 for a, b in itertools.pairwise(times) if b > a]
    moments.append(times[0] - timedelta(minutes=30))
    for campaign in ("promo", "news", "capped", "vip"):
        for name, kind in (
            ("regular", lpb.MESSAGE_KIND_REGULAR),
            ("optout-conf", lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION),
            ("help", lpb.MESSAGE_KIND_HELP_REPLY),
        ):
            said[f"{campaign} now {name}"] = await can_send(led, phone, campaign, kind=kind)
        for i, m in enumerate(moments):
            said[f"{campaign} asof {i} known-now"] = await as_of(
                led, phone, campaign, m, clock.now, lpb.MESSAGE_KIND_REGULAR
            )
            hind = await led.c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=phone,
                    brand="acme",
                    campaign=campaign,
                    at=ts(m),
                    message_kind=lpb.MESSAGE_KIND_REGULAR,
                    at_least_as_fresh=led.fresh(),
                )
            )
            said[f"{campaign} asof {i} hindsight"] = as_dict(hind)
    ce = await consent_and_events(led, phone, ("promo", "news", "capped", "vip"))
    events = ce.pop("events")
    said.update(ce)
    said["event order"] = [
        (e.get("event", {}).get("event_type"), e.get("event", {}).get("occurred_at"))
        for e in events.get("events", [])
    ]
    said["packet promo"] = await packet(led, phone, "promo")
    return normalized(said, {phone: "<phone>"})


def compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)[:400]


async def sweeps(aled: Ledger, clock: Clock) -> dict[str, list[Any]]:
    """Each number's findings of the compliance sweep of promo and capped."""
    swept: dict[str, list[Any]] = {}
    for campaign in ("promo", "capped"):
        async for part in aled.c.stub.SweepCampaign(
            api.SweepCampaignRequest(
                brand="acme",
                campaign=campaign,
                start_time=ts(clock.now - timedelta(days=60)),
                end_time=ts(clock.now),
                at_least_as_fresh=aled.fresh(),
            ),
            metadata=[("authorization", f"Bearer {aled.c.token}")],
            timeout=120,
        ):
            if part.HasField("finding"):
                f = part.finding
                swept.setdefault(f.phone, []).append(
                    (
                        campaign,
                        f.occurred_at.ToDatetime().isoformat(),
                        sorted(api.SweepFindingKind.Name(k) for k in f.kinds),
                        api.Reason.Name(f.reason),
                    )
                )
    return swept


@pytest.mark.parametrize("ledger", os.environ.get("PROBE_LEDGERS", "embedded,kafka").split(","))
async def test_probe(ledger, postgres_server, kafka_bootstrap, tmp_path):
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=0)))
    if os.environ.get("PROBE_REAL_CLOCK"):  # recorded_at after every fact's own time
        clock = Clock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10))
    first = clock.now - timedelta(days=40)
    campaigns = [
        define("acme", "promo", first, [PROMO_FROM]),
        define("acme", "news", first, [NEWS_FROM]),
        define("acme", "vip", first, [VIP_FROM], revoke_all=True),
        define(
            "acme",
            "capped",
            first,
            [CAPPED_FROM],
            frequency_caps=[lpb.FrequencyCap(limit=2, window=Duration(seconds=86400))],
        ),
    ]
    dbname = f"probe_arrival_{uuid.uuid4().hex[:8]}"
    dsn = await postgres_server.create_database(dbname)
    kafka = (
        kafka_settings(kafka_bootstrap, f"arr-{uuid.uuid4().hex[:8]}.")
        if ledger == "kafka"
        else None
    )
    settings = service_settings(tmp_path, dsn, kafka=kafka)
    chosen = os.environ.get("PROBE_HISTORIES")
    names = chosen.split(",") if chosen else list(HISTORIES)
    tmp = Path(tempfile.mkdtemp())
    report: list[str] = []
    dump: list[Any] = []
    n = 0
    plan: list[tuple[str, datetime, list[tuple[tuple, str]]]] = []
    live: dict[str, dict[tuple, Any]] = {}
    outcomes: dict[str, dict[tuple, list[str]]] = {}
    async with running(settings, clock) as runtime:
        await defined(runtime, campaigns)
        async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
            led = Ledger(app)
            aled = Ledger(admin)
            for hi, name in enumerate(names):
                history = HISTORIES[name]
                start = clock.now if name in RECENT else clock.now - timedelta(days=3 + hi)
                phones = []
                live[name], outcomes[name] = {}, {}
                for pi, order in enumerate(itertools.permutations(range(len(history)))):
                    n += 1
                    phone = f"+1{os.environ.get('PROBE_AREA', '415')}558{n:04d}"
                    paths = paths_for(history, pi)
                    got = []
                    mode = ("seq", "seq", "one-message", "one-stream")[pi % 4]
                    consents = [j for j in order if HISTORIES[name][j][0][:3] in ("in:", "out")]
                    if mode != "seq" and len(consents) > 1:
                        records = []
                        for j in consents:
                            kind, h = history[j]
                            what, _, camp = kind.partition(":")
                            at = start + timedelta(hours=h)
                            if what == "in":
                                records.append(
                                    api.ImportRecord(opt_in=opt_in(phone, "acme", camp, at))
                                )
                            else:
                                records.append(
                                    api.ImportRecord(
                                        opt_out=opt_out(
                                            phone,
                                            "acme",
                                            None if camp == "all" else camp,
                                            at,
                                            channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                                            text="STOP",
                                        )
                                    )
                                )
                            paths[j] = mode
                        first_consent = consents[0]
                    else:
                        records, first_consent = [], None
                    for j in order:
                        if records and j in consents:
                            if j == first_consent:
                                msgs = (
                                    [api.ImportConsentsRequest(records=records)]
                                    if mode == "one-message"
                                    else [api.ImportConsentsRequest(records=[r]) for r in records]
                                )
                                answers = [
                                    led.wrote(a)
                                    async for a in led.c.stub.ImportConsents(
                                        _gen(msgs),
                                        metadata=[("authorization", f"Bearer {led.c.token}")],
                                        timeout=60,
                                    )
                                ]
                                bad = [list(a.refusals) for a in answers if a.refusals]
                                got.append(f"{mode}:" + ("ok" if not bad else f"refused {bad}"))
                            continue
                        kind, h = history[j]
                        at = start + timedelta(hours=h)
                        got.append(
                            f"{kind}@{h}/{paths[j]}:"
                            + await deliver(led, runtime.address, phone, kind, at, paths[j], tmp)
                        )
                    key = (order, tuple(paths))
                    outcomes[name][key] = got
                    phones.append((key, phone))
                plan.append((name, start, phones))
            aled.token = aled.token.merge(led.token)
            swept = await sweeps(aled, clock)
            for name, start, phones in plan:
                for key, phone in phones:
                    live[name][key] = await readings(aled, clock, phone, start, HISTORIES[name])
                    live[name][key]["sweep"] = sorted(swept.get(phone, []))
            token = aled.fresh()
    rebuilt: dict[str, dict[tuple, Any]] = {}
    if not os.environ.get("PROBE_NO_REBUILD"):
        await finished(rebuild(settings))
        async with running(settings, clock) as runtime, client(runtime.address) as admin:
            aled = Ledger(admin)
            aled.token = ConsistencyToken.decode(token)
            swept = await sweeps(aled, clock)
            for name, start, phones in plan:
                rebuilt[name] = {}
                for key, phone in phones:
                    rebuilt[name][key] = await readings(aled, clock, phone, start, HISTORIES[name])
                    rebuilt[name][key]["sweep"] = sorted(swept.get(phone, []))
    await postgres_server.drop_database(dbname)
    for name, _, _ in plan:
        results = live[name]
        dump.append(
            {
                "history": name,
                "runs": [
                    {
                        "order": list(k[0]),
                        "paths": list(k[1]),
                        "outcomes": outcomes[name][k],
                        "readings": r,
                        "rebuilt": rebuilt.get(name, {}).get(k),
                    }
                    for k, r in results.items()
                ],
            }
        )
        report.append(f"== {name} ({len(results)} perms)")
        for key, got in outcomes[name].items():
            if any(not g.endswith(":ok") for g in got):
                report.append(f"  refused in {key}: {got}")
        for key, r in results.items():
            if name in rebuilt:
                diffs = leaves_apart(rebuilt[name][key], r)
                if diffs:
                    report.append(f"  REBUILT {key}: {len(diffs)} differences")
                    for d in diffs[:12]:
                        report.append(f"     {d[:400]}")
    out = Path(os.environ.get("PROBE_OUT", f"/tmp/probe_arrival_{ledger}.txt"))
    out.write_text("\n".join(report))
    out.with_suffix(".json").write_text(json.dumps(dump, default=str))
    print("\n".join(report))
