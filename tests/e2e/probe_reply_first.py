"""Probe (run by name): a reply the gateway recorded before the text it answers (HELP,
START, STOP) reached the ledger, against the same facts in order, on both ledgers."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from tests.e2e.harness import (
    Clock,
    client,
    define,
    defined,
    inbound,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    running,
    sent,
    service_settings,
    ts,
)
from tests.e2e.test_write_paths_agree import (
    Ledger,
    as_dict,
    can_send,
    consent_and_events,
    leaves_apart,
    normalized,
    packet,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
CAPPED_FROM = "+12125557903"
M = timedelta(minutes=1)
KINDS = {
    "HELP": lpb.MESSAGE_KIND_HELP_REPLY,
    "START": lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
    "STOP": lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
}


async def history(led: Ledger, phone: str, now, keyword: str, reply_first: bool) -> list[str]:
    said = []
    led.wrote(await led.c.RecordOptIn(opt_in(phone, "acme", "capped", now - 60 * M)))
    if keyword == "START":
        stop = inbound(phone, CAPPED_FROM, "STOP", now - 8 * M)
        said.append(str(as_dict(led.wrote(await led.c.HandleInboundMessage(stop))).get("reply")))
    text = inbound(phone, CAPPED_FROM, keyword, now - 4 * M)
    reply = sent(phone, "acme", "capped", now - 3 * M, kind=KINDS[keyword], from_number=CAPPED_FROM)
    steps = (
        [("reply", reply), ("text", text)] if reply_first else [("text", text), ("reply", reply)]
    )
    for what, request in steps:
        if what == "text":
            said.append(
                str(as_dict(led.wrote(await led.c.HandleInboundMessage(request))).get("reply"))
            )
        else:
            said.append(str(as_dict(led.wrote(await led.c.RecordMessageSent(request)))))
    return said


async def readings(led: Ledger, phone: str, now) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind in (("regular", lpb.MESSAGE_KIND_REGULAR), *KINDS.items()):
        out[f"can {name}"] = await can_send(led, phone, "capped", kind=kind)
    out.update(await consent_and_events(led, phone, ["capped"]))
    out["packet"] = await packet(led, phone, "capped")
    hind = await led.c.CanSendAsOf(
        api.CanSendAsOfRequest(
            phone=phone, brand="acme", campaign="capped", at=ts(now - M),
            message_kind=lpb.MESSAGE_KIND_REGULAR, at_least_as_fresh=led.fresh(),
        )
    )  # fmt: skip
    out["asof hindsight"] = as_dict(hind)
    return normalized(out, {phone: "<phone>"})


@pytest.mark.parametrize("ledger", os.environ.get("PROBE_LEDGERS", "embedded,kafka").split(","))
async def test_probe(ledger, postgres_server, kafka_bootstrap, tmp_path):
    clock = Clock(noon_in_los_angeles())
    first = clock.now - timedelta(days=40)
    cap = [lpb.FrequencyCap(limit=1, window=Duration(seconds=86400))]
    campaigns = [define("acme", "capped", first, [CAPPED_FROM], frequency_caps=cap)]
    dsn = await postgres_server.create_database(f"probe_rf_{uuid.uuid4().hex[:8]}")
    kafka = (
        kafka_settings(kafka_bootstrap, f"rf-{uuid.uuid4().hex[:8]}.")
        if ledger == "kafka"
        else None
    )
    settings = service_settings(tmp_path, dsn, kafka=kafka)
    report = []
    async with running(settings, clock) as runtime:
        await defined(runtime, campaigns)
        async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
            led, aled = Ledger(app), Ledger(admin)
            n = 0
            results = {}
            for keyword in KINDS:
                for reply_first in (False, True):
                    n += 1
                    phone = f"+1212559{n:04d}"
                    wrote = await history(led, phone, clock.now, keyword, reply_first)
                    aled.token = aled.token.merge(led.token)
                    results[(keyword, reply_first)] = (
                        wrote,
                        await readings(aled, phone, clock.now),
                    )
            health = await aled.c.GetCampaignHealth(
                api.GetCampaignHealthRequest(brand="acme", at_least_as_fresh=aled.fresh())
            )
            report.append(f"health: {as_dict(health)}")
            async for part in aled.c.stub.SweepCampaign(
                api.SweepCampaignRequest(
                    brand="acme", campaign="capped", start_time=ts(clock.now - timedelta(days=2)),
                    end_time=ts(clock.now), at_least_as_fresh=aled.fresh(),
                ),
                metadata=[("authorization", f"Bearer {aled.c.token}")], timeout=120,
            ):  # fmt: skip
                if part.HasField("finding"):
                    report.append(f"sweep finding: {as_dict(part.finding)}")
    for keyword in KINDS:
        (w1, a), (w2, b) = results[(keyword, False)], results[(keyword, True)]
        report.append(f"== {keyword}: in order wrote {w1}\n   reply first wrote {w2}")
        for d in leaves_apart(a, b):
            report.append(f"   {d[:600]}")
    out = f"/tmp/probe_reply_first_{ledger}.txt"
    with open(out, "w") as f:
        f.write("\n".join(report))
        f.write("\n" + json.dumps({f"{k}": v[1] for k, v in results.items()}, default=str))
    print("\n".join(report))
