"""A CanSend call on the service as it serves (the digest replica over a real
PostgreSQL, behind the real servicer and interceptors) runs code only in the files
of its reading path (``tests/reading_path.py``)."""

from __future__ import annotations

from datetime import timedelta

from consent.v1 import consent_service_pb2 as api

from services.adapters.digest_replica import DigestReplica
from tests.e2e.harness import client, define, noon_in_los_angeles, opt_in, running, service_settings
from tests.reading_path import INTERCEPTORS, SERVED_PATH, traced

PHONE = "+14155552671"  # America/Los_Angeles


async def test_a_served_cansend_call_runs_code_only_in_its_reading_path(tmp_path, postgres_dsn):
    when = noon_in_los_angeles()
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    async with running(settings, clock=lambda: when) as runtime:
        assert runtime.usecases is not None
        assert isinstance(runtime.usecases.checks.reads, DigestReplica)
        async with client(runtime.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            granted = await admin.RecordOptIn(opt_in(PHONE, "acme", "promo", when))
            request = api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=granted.consistency_token,
            )
            await admin.CanSend(request)  # imports and first reads
            answer, touched = await traced(lambda: admin.CanSend(request))
    assert answer.allowed, answer  # the whole policy ran, not an early refusal
    assert touched - (SERVED_PATH | INTERCEPTORS) == set()
    assert {
        "services/grpc_api/servicer.py",
        "services/usecases/checks.py",
        "services/adapters/digest_replica.py",
        "services/wire/compact_digest.py",
        "ledger/policy.py",
    } <= touched
