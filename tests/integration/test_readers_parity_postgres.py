"""``tests/unit/test_readers_parity.py``'s histories on the PostgreSQL view, read as
the service reads it (CanSend's digests from a ``DigestReplica``): every reader
agrees there too, and answers exactly as on the in-memory view."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.ports import ConsentView, DigestReads
from ledger.status import ConsentState
from services.adapters.digest_replica import DigestReplica
from services.adapters.migrations import migrate
from services.adapters.postgres_view import PostgresConsentView
from tests.infra.fixtures import database_name
from tests.infra.postgres_server import PostgresServer
from tests.unit.test_readers_parity import PHONES, TARGETS, Run, history
from tests.unit.usecase_harness import AUDITOR

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]

SEEDS = (0, 3)
"""Histories that reach an erasure, holds of a brand and of every brand."""


async def test_every_reader_answers_alike_on_postgres_as_in_memory(
    postgres_server: PostgresServer,
) -> None:
    pools: list[asyncpg.Pool] = []

    @contextlib.asynccontextmanager
    async def on_postgres() -> AsyncIterator[tuple[ConsentView, DigestReads]]:
        name = database_name("readers_parity")
        dsn = await postgres_server.create_database(name)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        pools.append(pool)
        try:
            await migrate(pool)
            view = PostgresConsentView(pool)
            yield view, DigestReplica(pool, view)
        finally:
            await pool.close()
            await postgres_server.drop_database(name)

    async def rows_agree(run: Run) -> None:
        """The stored ``consent_status`` rows say what GetConsent says (but for the
        revoke-all rule and a change of the campaign's content, which they ignore:
        README, "The projections")."""
        rows = {
            (r["phone"], r["brand"], r["campaign"]): r
            for r in await pools[-1].fetch("SELECT * FROM consent_status")
        }
        for phone in PHONES:
            for brand, campaign in TARGETS:
                consent = await run.uses.audit.get_consent(phone, brand, campaign, reader=AUDITOR)
                row = rows.get((phone, brand, campaign))
                where = (phone, brand, campaign, run.clock.now, consent, row)
                if consent.pending:  # every row of the number says so (none for a campaign
                    # the number has no fact of)
                    held = str(consent.pending[0].event.event_id)
                    if row is not None:
                        assert row["status"] == "pending_review", where
                        assert str(row["held_event_id"]) == held, where
                elif row is None:
                    assert consent.state is not ConsentState.ACTIVE, where
                else:
                    assert row["held_event_id"] is None, where
                    if consent.state is ConsentState.ACTIVE:
                        assert row["status"] == "active", where
                    elif consent.state is ConsentState.NEVER_GRANTED and consent.grant:
                        # A grant to content the campaign no longer sends.
                        assert row["status"] == "active", where
                    elif consent.state in (ConsentState.NEVER_GRANTED, ConsentState.ERASED):
                        assert row["status"] == "none", where
                    else:  # revoked, perhaps by the revoke-all rule alone
                        assert row["status"] in ("revoked", "active"), where
                seen[f"row {None if row is None else row['status']}"] += 1

    seen: Counter[str] = Counter()
    for seed in SEEDS:
        for batched in (False, True):
            in_memory = await history(seed, batched, Counter())
            on_pg = await history(seed, batched, seen, on_postgres, rows_agree)
            differ = {
                k: (in_memory.get(k), on_pg.get(k))
                for k in in_memory.keys() | on_pg.keys()
                if in_memory.get(k) != on_pg.get(k)
            }
            assert not differ, (seed, batched, differ)
    reached = ("send as told asked", "step revocation_pending_review", "step subject_erased")
    assert not [what for what in reached if not seen[what]], seen
