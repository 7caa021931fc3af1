"""GetConsent's state, and the projection's consent_status row, for each way a
campaign's consent can stand, through the real gRPC server and PostgreSQL: both
read ``ledger.status``."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import (
    client,
    define,
    inbound,
    now,
    opt_in,
    opt_out,
    running,
    service_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBER = "+12125550180"


async def test_each_consent_state_is_reported_with_the_opt_out_that_stands(tmp_path, postgres_dsn):
    t = now()
    phones = {name: f"+1415555{3100 + i:04d}" for i, name in enumerate(
        ("never", "active", "stopped", "stopped_all", "granted_again", "review")
    )}  # fmt: skip
    async with running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", t - timedelta(days=1), [NUMBER]))
            for name, phone in phones.items():
                if name != "never":
                    await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(minutes=10)))
            stop = await c.RecordOptOut(
                opt_out(phones["stopped"], "acme", "promo", t - timedelta(minutes=5))
            )
            stop_all = await c.RecordOptOut(
                opt_out(phones["stopped_all"], "acme", None, t - timedelta(minutes=5))
            )
            await c.RecordOptOut(
                opt_out(phones["granted_again"], "acme", "promo", t - timedelta(minutes=5))
            )
            await c.RecordOptIn(
                opt_in(phones["granted_again"], "acme", "promo", t - timedelta(minutes=1))
            )
            last = await c.HandleInboundMessage(
                inbound(
                    phones["review"],
                    NUMBER,
                    "please stop texting me",
                    t - timedelta(minutes=1),
                    message_id="SM-review",
                )
            )

            found = {}
            for name, phone in phones.items():
                found[name] = await c.GetConsent(
                    api.GetConsentRequest(
                        phone=phone,
                        brand="acme",
                        campaign="promo",
                        at_least_as_fresh=last.consistency_token,
                    )
                )

        assert {name: r.state for name, r in found.items()} == {
            "never": api.CONSENT_STATE_NEVER_GRANTED,
            "active": api.CONSENT_STATE_ACTIVE,
            "stopped": api.CONSENT_STATE_REVOKED,
            "stopped_all": api.CONSENT_STATE_REVOKED_BRAND_WIDE,
            "granted_again": api.CONSENT_STATE_ACTIVE,
            "review": api.CONSENT_STATE_PENDING_REVIEW,
        }
        assert found["stopped"].revocation.event.event_id == stop.event_ids[0]
        assert found["stopped_all"].revocation.event.event_id == stop_all.event_ids[0]
        for name in ("never", "active", "granted_again", "review"):
            assert not found[name].HasField("revocation"), name
        assert not found["never"].HasField("grant") and found["active"].HasField("grant")
        assert len(found["review"].pending_revocation_candidates) == 1

        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(
                "SELECT phone, status FROM consent_status WHERE brand = 'acme'"
                " AND campaign = 'promo'"
            )
        finally:
            await conn.close()
        stored = {row["phone"]: row["status"] for row in rows}
        assert {name: stored.get(phone) for name, phone in phones.items()} == {
            "never": None,
            "active": "active",
            "stopped": "revoked",
            "stopped_all": "revoked",
            "granted_again": "active",
            "review": "pending_review",
        }
