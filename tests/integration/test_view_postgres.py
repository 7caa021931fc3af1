"""The ``ConsentView`` conformance suite against ``PostgresConsentView`` on a real
PostgreSQL (a fresh database per test, migrated by the project's own runner)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from ledger.events import (
    ANY_BRAND,
    CandidateResolution,
    ConsentTier,
    Recorded,
    RevocationCandidateResolved,
)
from ledger.ports import RequestClaim, RequestTaken, RequestUse, Stream
from services.adapters.migrations import MIGRATIONS_DIR, discover, migrate
from services.adapters.postgres_view import (
    _CHANGES,
    PostgresConsentView,
    _event_row,
    read_pool,
)
from services.errors import StoreUnavailable
from services.wire.codec import encode_recorded
from tests.conformance.view_suite import (
    T0,
    ConsentViewSuite,
    PassTime,
    Positions,
    flag,
    grant,
    of_request,
    revoke,
    sent,
)

pytestmark = pytest.mark.postgres


class TestPostgresConsentView(ConsentViewSuite):
    @pytest_asyncio.fixture(loop_scope="session")
    async def pool(self, postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
        try:
            await migrate(pool)
            yield pool
        finally:
            await pool.close()

    @pytest.fixture
    def view(self, pool: asyncpg.Pool) -> PostgresConsentView:
        return PostgresConsentView(pool)

    @pytest.fixture
    def pass_time(self, pool: asyncpg.Pool) -> PassTime:
        # The turns run on the database's clock, which a test cannot move: moving
        # every stored time back by as much is the same to the view.
        async def pass_time(seconds: float) -> None:
            await pool.execute(
                "UPDATE append_turn SET until = until - make_interval(secs => $1),"
                " appended_at = appended_at - make_interval(secs => $1)",
                seconds,
            )

        return pass_time


async def test_migrate_applies_each_file_once_in_version_order(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()

    expected = [m.name for m in discover()]
    assert first == expected and "0002_projections" in first
    assert second == []
    assert [r["name"] for r in recorded] == expected


async def test_two_processes_migrating_at_once_apply_each_file_once(postgres_dsn: str) -> None:
    conns = [await asyncpg.connect(postgres_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for c in conns:
            await c.close()

    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in discover())
    assert count == len(discover())


async def test_a_failing_migration_leaves_nothing_and_stops_the_rest(
    postgres_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    (tmp_path / "0003_later.sql").write_text("CREATE TABLE later (id int);")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, tmp_path)
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        versions = await conn.fetch("SELECT version FROM schema_migrations")
    finally:
        await conn.close()

    assert "good" in tables and "half" not in tables and "later" not in tables
    assert [r["version"] for r in versions] == [1]


async def test_a_migration_outside_a_transaction_builds_an_index_concurrently(
    postgres_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_table.sql").write_text("CREATE TABLE t (id int, kind text);")
    concurrent = tmp_path / "0002_index.sql"
    head = "-- consent-ledger: no transaction\n-- a comment; with a semicolon\n"
    build = "CREATE INDEX CONCURRENTLY t_kind ON t (id)\n    WHERE kind = 'x';\n"
    concurrent.write_text(f"{head}DROP INDEX CONCURRENTLY IF EXISTS t_kind;\n{build}SELECT 1/0;\n")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):  # after the build: not recorded
            await migrate(conn, tmp_path)
        assert [
            r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
        ] == [1]
        concurrent.write_text(f"{head}DROP INDEX CONCURRENTLY IF EXISTS t_kind;\n{build}")
        assert await migrate(conn, tmp_path) == ["0002_index"]  # from the top again
        valid = await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_kind'::regclass"
        )
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert valid is True
    assert [r["version"] for r in versions] == [1, 2]


async def test_consent_status_rows_answer_audit_queries(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool)
        pos = Positions()
        phone = "+14155550100"
        deals = grant(phone, "acme", "deals", T0)
        news = grant(phone, "acme", "news", T0, tier=ConsentTier.INFORMATIONAL)
        stop = revoke(phone, "acme", "deals", T0 + timedelta(hours=1))
        await view.apply(
            Stream.SUBSCRIBERS,
            pos.record([deals, news, stop, sent(phone, "acme", "alerts", T0)]),
        )
        before_stopall = await _status(pool, phone)
        stopall = revoke(phone, "acme", None, T0 + timedelta(hours=2))
        await view.apply(Stream.SUBSCRIBERS, pos.record([stopall]))
        after_stopall = await _status(pool, phone)
    finally:
        await pool.close()

    assert before_stopall == {
        "alerts": ("none", None, None, None),
        "deals": ("revoked", 3, deals.event_id, stop.event_id),
        "news": ("active", 2, news.event_id, None),
    }
    assert after_stopall == {
        "alerts": ("revoked", None, None, stopall.event_id),
        "deals": ("revoked", 3, deals.event_id, stopall.event_id),
        "news": ("revoked", 2, news.event_id, stopall.event_id),
    }


async def test_consent_status_rows_say_a_number_is_held_for_review(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """A held opt-out of the brand, or one of brand "*" (a STOP to a number no campaign
    sends from, held under every brand), makes every row of the number say
    ``pending_review`` and name the hold, in the batch that holds it and in later ones
    (an opt-in after it), until it is dismissed. Rows stored before the migration
    are set so from the review queue's table, naming the hold the projector (and a
    rebuild) names, the first GetConsent lists, of a number held twice too. They
    said ``active`` while CanSend denied."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        older = tmp_path / "older"
        older.mkdir()
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if int(path.name[:4]) < 24:
                shutil.copy(path, older / path.name)
        await migrate(pool, older)
        # This version's projector writes the rows of the version before: the same
        # but for held_event_id and the status pending_review, set back below.
        old_check = "CHECK (status IN ('active', 'revoked', 'none'))"
        await pool.execute(
            "ALTER TABLE consent_status ADD COLUMN held_event_id uuid,"
            " DROP CONSTRAINT consent_status_status_check"
        )
        view = PostgresConsentView(pool)
        pos = Positions()
        phone, other, twice = "+14155550110", "+14155550111", "+14155550112"
        wide = replace(flag(phone, ANY_BRAND, T0), text="STOP", unattributed=True, to_number="+1")
        own = flag(other, "acme", T0)
        # Placed in the review queue in the order opposite to their event ids'.
        later, sooner = (
            replace(flag(twice, "acme", T0), event_id=uuid.UUID(int=n)) for n in (2**127, 1)
        )
        await view.apply(
            Stream.SUBSCRIBERS,
            pos.record([grant(p, "acme", "deals", T0) for p in (phone, other, twice)]),
        )
        await view.apply(Stream.SUBSCRIBERS, pos.record([wide, own, later]))
        await view.apply(Stream.SUBSCRIBERS, pos.record([sooner]))
        projected = await _held(pool, twice)
        # Stored as the version before wrote them: held, and said active.
        await pool.execute("UPDATE consent_status SET status = 'active', held_event_id = NULL")
        await pool.execute(
            "ALTER TABLE consent_status DROP COLUMN held_event_id,"
            f" ADD CONSTRAINT consent_status_status_check {old_check}"
        )
        assert (await migrate(pool))[0] == "0024_consent_status_holds"
        migrated = {p: await _held(pool, p) for p in (phone, other, twice)}
        later = grant(phone, "acme", "news", T0 + timedelta(minutes=1))
        await view.apply(Stream.SUBSCRIBERS, pos.record([later]))
        held = await _held(pool, phone)
        dismissed = RevocationCandidateResolved(
            event_id=uuid.uuid4(),
            occurred_at=T0 + timedelta(minutes=2),
            phone=phone,
            brand=ANY_BRAND,
            candidate_event_id=wide.event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        await view.apply(Stream.SUBSCRIBERS, pos.record([dismissed]))
        after = await _held(pool, phone)
    finally:
        await pool.close()

    assert projected == {"deals": ("pending_review", sooner.event_id)}
    assert migrated == {
        phone: {"deals": ("pending_review", wide.event_id)},
        other: {"deals": ("pending_review", own.event_id)},
        twice: projected,
    }
    assert held == {
        "deals": ("pending_review", wide.event_id),
        "news": ("pending_review", wide.event_id),
    }
    assert after == {"deals": ("active", None), "news": ("active", None)}


async def _held(pool: asyncpg.Pool, phone: str) -> dict[str, tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT campaign, status, held_event_id FROM consent_status"
        " WHERE phone = $1 AND brand = 'acme'",
        phone,
    )
    return {r["campaign"]: (r["status"], r["held_event_id"]) for r in rows}


async def test_consent_status_says_to_its_readers_it_is_no_decision(postgres_dsn: str) -> None:
    """consent_status ignores the revoke-all rule (a STOP to deals leaves news
    "active" there while CanSend denies it under the rule); a reader of the database
    saw nothing that said so."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        table = await pool.fetchval("SELECT obj_description('consent_status'::regclass)")
        status = await pool.fetchval(
            "SELECT col_description('consent_status'::regclass, attnum) FROM pg_attribute"
            " WHERE attrelid = 'consent_status'::regclass AND attname = 'status'"
        )
    finally:
        await pool.close()
    assert table is not None and table.startswith("Not a decision"), table
    assert "revoke-all" in table and "CanSend" in table, table
    assert status is not None and "not whether a message may be sent" in status, status


async def _status(pool: asyncpg.Pool, phone: str) -> dict[str, tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT campaign, status, tier, granted_event_id, revoked_event_id"
        " FROM consent_status WHERE phone = $1 AND brand = 'acme'",
        phone,
    )
    return {r["campaign"]: tuple(r.values())[1:] for r in rows}


async def test_applying_what_a_writer_claimed_leaves_the_claim_row_unwritten(
    pool: asyncpg.Pool,
) -> None:
    view = PostgresConsentView(pool)
    phone = "+14155550100"
    events = [of_request(grant(phone, "acme", c, T0), "r1", "fp-a") for c in ("deals", "news")]
    claimed = [str(e.event_id) for e in events]
    await view.claim_request("acme", "r1", "fp-a", claimed)
    version = "SELECT xmin::text FROM request_use WHERE brand = 'acme' AND request_id = 'r1'"
    before = await pool.fetchval(version)
    pos = Positions()
    for event in events:  # one batch each: each holds a part of the claim's ids
        await view.apply(Stream.SUBSCRIBERS, pos.record([event]))

    assert await pool.fetchval(version) == before  # no new row version per batch
    assert await view.request_use("acme", "r1") == RequestUse("fp-a", tuple(claimed))
    assert len(await view.history(phone, "acme")) == 2


async def test_takes_in_flight_at_once_share_one_transaction(postgres_dsn: str) -> None:
    pool = await read_pool(postgres_dsn)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=pool, timeout=5.0)
        takes = await asyncio.gather(
            *(view.take_request("acme", f"r{i}", "fp", [str(uuid.uuid4())]) for i in range(8))
        )
        assert all(t.taken for t in takes)
        # Rows one transaction inserted share its id: fewer commits than takes.
        commits = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM request_use")
        assert commits <= 2
    finally:
        await pool.close()


async def test_many_takes_of_one_request_id_at_once_take_it_once(postgres_dsn: str) -> None:
    pool = await read_pool(postgres_dsn)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=pool, timeout=5.0)
        ids = [str(uuid.uuid4()) for _ in range(16)]
        takes = await asyncio.gather(
            *(view.take_request("acme", "r1", f"fp-{i}", [i]) for i in ids)
        )
        [winner] = [t for t in takes if t.taken]
        assert {t.use for t in takes} == {winner.use}
        assert await view.request_use("acme", "r1") == winner.use
    finally:
        await pool.close()


async def test_a_take_the_store_refuses_fails_alone_in_its_batch(postgres_dsn: str) -> None:
    pool = await read_pool(postgres_dsn)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=pool, timeout=5.0)
        names = ["r0", "r1", "r\x00", "r3", "r4"]  # PostgreSQL text holds no NUL
        outcomes = await asyncio.gather(
            *(view.take_request("acme", n, "fp", [str(uuid.uuid4())]) for n in names),
            return_exceptions=True,
        )
        assert isinstance(outcomes[2], asyncpg.PostgresError)
        assert all(
            isinstance(o, RequestTaken) and o.taken for i, o in enumerate(outcomes) if i != 2
        )
        assert await pool.fetchval("SELECT count(*) FROM request_use") == 4
    finally:
        await pool.close()


async def test_two_instances_taking_the_same_ids_at_once_do_not_deadlock(
    postgres_dsn: str,
) -> None:
    """Their batches take the rows in one order, so one waits for the other's commit;
    in opposite orders they would deadlock, which PostgreSQL would only notice after
    the long ``deadlock_timeout`` set here."""
    pools = [
        await asyncpg.create_pool(
            postgres_dsn, min_size=1, max_size=2, server_settings={"deadlock_timeout": "30s"}
        )
        for _ in range(2)
    ]
    try:
        await migrate(pools[0])
        a, b = (PostgresConsentView(pool, timeout=20.0) for pool in pools)
        names = [f"r{i:02}" for i in range(16)]

        async def takes(view: PostgresConsentView, order: list[str]) -> list[RequestTaken]:
            fingerprint = f"fp-{id(view)}"
            return await asyncio.gather(
                *(view.take_request("acme", n, fingerprint, [str(uuid.uuid4())]) for n in order)
            )

        both = await asyncio.wait_for(asyncio.gather(takes(a, names), takes(b, names[::-1])), 10)
        by_a, by_b = both[0], both[1][::-1]
        for name, x, y in zip(names, by_a, by_b, strict=True):
            assert x.taken != y.taken, name
            assert x.use == y.use == await a.request_use("acme", name)
    finally:
        for pool in pools:
            await pool.close()


async def test_two_instances_claiming_the_same_messages_at_once_do_not_deadlock(
    postgres_dsn: str,
) -> None:
    """Sends claim their message ids in the same statement as their request ids: two
    instances' batches of the same messages under other request ids (a gateway that
    sent each send to both) took the claims in the order of the request ids, which
    need not be the messages' order, and deadlocked. PostgreSQL would notice only
    after the long ``deadlock_timeout`` set here (a second by default, and then
    a batch failed and ran again call by call, past the callers' bound)."""
    pools = [
        await asyncpg.create_pool(
            postgres_dsn, min_size=1, max_size=2, server_settings={"deadlock_timeout": "30s"}
        )
        for _ in range(2)
    ]
    try:
        await migrate(pools[0])
        a, b = (PostgresConsentView(pool, timeout=20.0) for pool in pools)
        messages = [f"SM{i:02}" for i in range(16)]

        async def takes(view: PostgresConsentView, prefix: str, order: list[str]) -> None:
            content = "the same send"
            # The first call goes alone; the others, sent meanwhile, as one batch.
            first = view.take_request("acme", f"{prefix}-first", "fp", [str(uuid.uuid4())])
            await asyncio.gather(
                first,
                *(
                    view.take_request(
                        "acme",
                        f"{prefix}{i:02}",
                        "fp",
                        [str(uuid.uuid4())],
                        ("+14155550100", m),
                        content=content,
                    )
                    for i, m in enumerate(order)
                ),
            )

        await asyncio.wait_for(
            asyncio.gather(takes(a, "a", messages), takes(b, "b", messages[::-1])), 10
        )
        assert await pools[0].fetchval("SELECT count(*) FROM message_claim") == len(messages)
    finally:
        for pool in pools:
            await pool.close()


async def test_sends_and_other_writes_sharing_request_ids_at_once_do_not_deadlock(
    postgres_dsn: str,
) -> None:
    """A send's take locks its message claim, then its request id; a batch went in
    the order of its calls, the other writes' (by request id) before the sends' (by
    message). Two instances' batches where a send and another write shared a request
    id (a client reusing an id for another request), one each side, took the request
    id and the message in opposite orders and deadlocked; PostgreSQL broke it only
    after ``deadlock_timeout`` (set long here), failing one of them. A batch now
    takes every message claim first, then every request id, each in key order: one
    total order, whatever the calls."""
    import random

    pools = [
        await asyncpg.create_pool(
            postgres_dsn, min_size=1, max_size=2, server_settings={"deadlock_timeout": "30s"}
        )
        for _ in range(2)
    ]
    try:
        await migrate(pools[0])
        a, b = (PostgresConsentView(pool, timeout=20.0) for pool in pools)
        pairs, rounds = 16, 6

        def take(view: PostgresConsentView, side: str, r: int, k: int, send: bool) -> Any:
            # Side a: an opt-in under s{k}, a send of SM{k} under t{k}; side b the
            # other way round: each request id is a send's on one side only.
            request_id = f"{'st'[(side == 'a') == send]}{r}-{k:02}"
            ids = [str(uuid.uuid4())]
            if not send:
                return view.take_request("acme", request_id, f"fp-{side}", ids)
            message = ("+14155550100", f"SM{r}-{k:02}")
            return view.take_request(
                "acme", request_id, f"fp-{side}", ids, message, content="the same send"
            )

        async def takes(view: PostgresConsentView, side: str, r: int) -> list[Any]:
            # The first call goes alone; the others, made meanwhile, as one batch.
            first = view.take_request("acme", f"{side}{r}-first", "fp", [str(uuid.uuid4())])
            order = random.Random(r).sample(range(2 * pairs), 2 * pairs)
            calls = [take(view, side, r, i // 2, i % 2 == 0) for i in order]
            return await asyncio.gather(first, *calls, return_exceptions=True)

        for r in range(rounds):
            both = await asyncio.wait_for(asyncio.gather(takes(a, "a", r), takes(b, "b", r)), 15)
            failed = [o for side in both for o in side if isinstance(o, BaseException)]
            assert failed == [], r
        uses = await pools[0].fetchval("SELECT count(*) FROM request_use")
        assert uses == rounds * (2 * pairs + 2)  # each request id taken once, by one side
        # A send refused for its request id claims no message (none is left that no
        # request holds).
        stray = await pools[0].fetchval(
            "SELECT count(*) FROM message_claim AS c WHERE NOT EXISTS "
            "(SELECT 1 FROM request_use AS u WHERE c.event_id = ANY(u.event_ids))"
        )
        assert stray == 0
    finally:
        for pool in pools:
            await pool.close()


async def test_a_send_under_a_request_id_another_write_of_its_batch_takes_claims_nothing(
    postgres_dsn: str,
) -> None:
    """A batch makes its message claims before its request ids: a send whose request
    id another write of the same batch takes is refused, and its message claim is
    dropped, as a take alone would not have made it."""
    pool = await read_pool(postgres_dsn)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=pool, timeout=5.0)
        first = view.take_request("acme", "first", "fp", [str(uuid.uuid4())])
        other = view.take_request("acme", "r1", "fp-opt-in", [str(uuid.uuid4())])
        send = view.take_request(
            "acme", "r1", "fp-send", [str(uuid.uuid4())], ("+14155550100", "SM1"), content="hi"
        )
        _, opt_in, sent = await asyncio.gather(first, other, send)
        assert opt_in.taken and not sent.taken
        assert sent.use.fingerprint == "fp-opt-in"
        assert await pool.fetchval("SELECT count(*) FROM message_claim") == 0
    finally:
        await pool.close()


async def test_a_cached_state_is_never_served_after_its_row_changed(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, state_cache_size=10)
        other = PostgresConsentView(pool)  # another instance's projector
        pos = Positions()
        phone = "+14155550101"
        await other.apply(Stream.SUBSCRIBERS, pos.record([grant(phone, "acme", "deals", T0)]))
        first = (await view.subscriber_states("acme", [phone]))[phone]
        assert (await view.subscriber_states("acme", [phone]))[phone] is first  # cached
        stop = revoke(phone, "acme", "deals", T0 + timedelta(hours=1))
        await other.apply(Stream.SUBSCRIBERS, pos.record([stop]))
        after = (await view.subscriber_states("acme", [phone]))[phone]
    finally:
        await pool.close()
    assert after is not first
    assert after.campaign("deals").revocation is not None
    assert after.campaign("deals").revocation.event_id == str(stop.event_id)


async def test_the_state_cache_stays_within_its_bound(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, state_cache_size=5)
        pos = Positions()
        phones = [f"+1415555{n:04d}" for n in range(200, 220)]
        await view.apply(
            Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "deals", T0) for p in phones])
        )
        states = await view.subscriber_states("acme", phones)
        assert len(view._states) == 5
    finally:
        await pool.close()
    assert all(states[p].campaign("deals").grant is not None for p in phones)


async def test_a_row_without_a_digest_is_answered_from_its_snapshot(postgres_dsn: str) -> None:
    """Rows written before the digest column, or in a format this code does not know,
    still answer: from the snapshot, with the same digest."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    reads = await read_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=reads)
        pos = Positions()
        phones = ["+14155550301", "+14155550302", "+14155550303"]
        await view.apply(
            Stream.SUBSCRIBERS,
            pos.record(
                [grant(p, "acme", "deals", T0) for p in phones]
                + [revoke(phones[1], "acme", "deals", T0 + timedelta(hours=1))]
            ),
        )
        written = await view.digests("acme", phones)
        await pool.execute("UPDATE subscriber_state SET digest = NULL WHERE phone = $1", phones[0])
        await pool.execute(
            "UPDATE subscriber_state SET digest = '\\x7f00'::bytea WHERE phone = $1", phones[1]
        )
        again = await view.digests("acme", phones)
    finally:
        await reads.close()
        await pool.close()
    assert again == written
    assert written[phones[1]].campaign("deals").revocation is not None


async def test_the_review_queue_migration_keeps_the_recorded_order_of_earlier_replies(
    postgres_dsn: str,
) -> None:
    """Replies flagged before migration 0006 get their places in the order the queue
    had listed them in (recorded time); the first reply applied after it goes last."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool)
        pos = Positions()
        phones = [f"+1415555{n:04d}" for n in range(300, 303)]
        # Applied in one order, recorded in the reverse one.
        for minutes, phone in zip((30, 20, 10), phones, strict=True):
            reply = flag(phone, "acme", T0)
            await view.apply(
                Stream.SUBSCRIBERS, pos.record([reply], T0 + timedelta(minutes=minutes))
            )
        assert [f.phone for f in await view.flagged("acme")] == phones
        # The database as it was before 0006.
        await pool.execute(
            "DROP TRIGGER ledger_event_copy_place_flagged ON ledger_event_copy;"
            " DROP FUNCTION place_flagged_reply();"
            " DROP TABLE flagged_reply, flagged_reply_counter;"
            " DELETE FROM schema_migrations WHERE version >= 6"
        )

        assert (await migrate(pool))[:3] == [  # and the later ones, which allow a rerun
            "0006_review_queue_order",
            "0007_flagged_reply_trigger",
            "0008_flagged_reply_resolved",
        ]
        queue = await view.flagged("acme")
        assert [(f.position, f.phone) for f in queue] == [
            (1, phones[2]),
            (2, phones[1]),
            (3, phones[0]),
        ]
        later = "+14155550303"
        await view.apply(
            Stream.SUBSCRIBERS, pos.record([flag(later, "acme", T0 - timedelta(days=1))])
        )
        assert await view.flagged("acme", after=3) == [
            (4, (await view.flagged("acme"))[-1].event_id, later)
        ]
    finally:
        await pool.close()


async def insert_event_copy(conn: asyncpg.Connection, recorded: Recorded) -> None:
    """One event copy inserted by itself, as an earlier version of the view did."""
    row = _event_row(Stream.SUBSCRIBERS, recorded, encode_recorded(recorded))
    await conn.execute(
        "INSERT INTO ledger_event_copy VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", *row
    )


async def test_a_reply_any_version_applies_gets_its_place_at_its_commit(pool: asyncpg.Pool) -> None:
    """The places come from the database (migration 0007), so an instance of an
    earlier version that only inserts the reply's event copy gets it placed, and
    one of the version before, which places its replies itself, keeps its place."""
    view = PostgresConsentView(pool)
    pos = Positions()
    first, copied, placed = (f"+1415555{n:04d}" for n in range(310, 313))
    await view.apply(Stream.SUBSCRIBERS, pos.record([flag(first, "acme", T0)]))

    async with pool.acquire() as conn, conn.transaction():  # an earlier version
        [reply] = pos.record([flag(copied, "acme", T0)])
        await insert_event_copy(conn, reply)
        assert await conn.fetchval("SELECT count(*) FROM flagged_reply") == 1
    async with pool.acquire() as conn, conn.transaction():  # the version before
        [reply] = pos.record([flag(placed, "acme", T0)])
        await insert_event_copy(conn, reply)
        last = await conn.fetchval("SELECT last FROM flagged_reply_counter FOR UPDATE")
        await conn.execute(
            "INSERT INTO flagged_reply VALUES ($1, 'acme', $2, $3)",
            reply.event.event_id,
            placed,
            last + 1,
        )
        await conn.execute("UPDATE flagged_reply_counter SET last = $1", last + 1)

    queue = await view.flagged("acme")
    assert [(f.position, f.phone) for f in queue] == [(1, first), (2, copied), (3, placed)]


async def test_the_trigger_migration_places_replies_left_without_a_place(
    pool: asyncpg.Pool,
) -> None:
    """Replies an earlier version applied without a place, after 0006 and before
    0007, get places from 0007, after every place given before."""
    view = PostgresConsentView(pool)
    pos = Positions()
    first, unplaced, next_ = (f"+1415555{n:04d}" for n in range(320, 323))
    await view.apply(Stream.SUBSCRIBERS, pos.record([flag(first, "acme", T0)]))
    # The database as it was before 0007.
    await pool.execute(
        "DROP TRIGGER ledger_event_copy_place_flagged ON ledger_event_copy;"
        " DROP FUNCTION place_flagged_reply();"
        " DELETE FROM schema_migrations WHERE version = 7"
    )
    await view.apply(Stream.SUBSCRIBERS, pos.record([flag(unplaced, "acme", T0)]))
    assert [f.phone for f in await view.flagged("acme")] == [first]

    assert await migrate(pool) == ["0007_flagged_reply_trigger"]
    later = T0 - timedelta(days=1)  # recorded earlier still: the order is the places'
    await view.apply(Stream.SUBSCRIBERS, pos.record([flag(next_, "acme", later)], later))
    queue = await view.flagged("acme")
    assert [(f.position, f.phone) for f in queue] == [(1, first), (2, unplaced), (3, next_)]


async def test_replies_resolved_before_the_resolved_column_are_listed_until_a_rebuild(
    pool: asyncpg.Pool,
) -> None:
    """Migration 0008 cannot read resolutions (they are in the event payloads), so
    the replies it finds are "not known" and listed, for the fold to decide, until
    a rebuild applies their resolutions again."""
    view = PostgresConsentView(pool)
    pos = Positions()
    reply = flag("+14155550330", "acme", T0)
    resolution = RevocationCandidateResolved(
        event_id=uuid.uuid4(),
        occurred_at=T0 + timedelta(minutes=1),
        phone=reply.phone,
        brand="acme",
        candidate_event_id=reply.event_id,
        resolution=CandidateResolution.DISMISSED,
    )
    batches = [pos.record([reply]), pos.record([resolution])]
    for batch in batches:
        await view.apply(Stream.SUBSCRIBERS, batch)
    assert await view.flagged("acme") == []

    await pool.execute("UPDATE flagged_reply SET resolved = NULL")  # as 0008 left it
    [unknown] = await view.flagged("acme")
    assert unknown.event_id == str(reply.event_id)

    await view.reset()
    for batch in batches:
        await view.apply(Stream.SUBSCRIBERS, batch)
    assert await view.flagged("acme") == []


async def test_views_on_separate_pools_share_one_turn_for_campaign_writes(
    postgres_dsn: str,
) -> None:
    """Two instances (a pool each) on one database: while one holds the turn the
    other waits, and a holder whose connection dies gives it up."""
    pools = [await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2) for _ in range(2)]
    a, b = (PostgresConsentView(pool) for pool in pools)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with a.campaign_writes(5.0):
            held.set()
            await release.wait()

    holders: list[asyncio.Task[None]] = []
    try:
        await migrate(pools[0])
        holders.append(asyncio.create_task(hold()))
        await asyncio.wait_for(held.wait(), 5)
        with pytest.raises(TimeoutError):
            async with b.campaign_writes(0.2):
                pass
        release.set()
        await holders[0]
        async with b.campaign_writes(1.0):
            pass

        # The holder's process dies: its connection ends, and the turn with it.
        held.clear()
        release.clear()
        holders.append(asyncio.create_task(hold()))
        await asyncio.wait_for(held.wait(), 5)
        # Advisory locks are server-wide: only this test's database's holder counts
        # (another test's view on the same server holds a turn of its own).
        killed = await pools[1].fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND classid = $1 AND objid = 1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            0x56494557,
        )
        assert killed == 1
        async with b.campaign_writes(5.0):
            pass
        release.set()
        # Its end fails, as asyncpg finds the connection gone (the error varies).
        [ended] = await asyncio.gather(holders[1], return_exceptions=True)
        assert isinstance(ended, Exception)
    finally:
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
        for pool in pools:
            pool.terminate()


async def test_a_change_stream_page_reads_the_changes_index(postgres_dsn: str) -> None:
    """A page of a brand's changes is found by brand, partition and offset (migration
    0010), not by reading the brand's whole history from its first event."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool)
        pos = Positions()
        events = [
            grant(f"+1415555{n % 4000:04d}", f"brand-{n % 5}", "deals", T0 + timedelta(seconds=n))
            for n in range(20_000)
        ]
        recorded = pos.record(events)
        for start in range(0, len(recorded), 4000):
            await view.apply(Stream.SUBSCRIBERS, recorded[start : start + 4000])
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE ledger_event_copy")
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {_CHANGES}",
                "brand-1",
                [0, 1, 2, 3],
                [900, 900, 900, 900],
                100,
                None,
                None,
            )
        page = await view.changes("brand-1", {p: 900 for p in range(4)}, 100)
    finally:
        await pool.close()
    assert "ledger_event_copy_changes" in plan
    assert len(page.events) == 100
    assert all(r.position.offset >= 900 for r in page.events)


async def test_a_bulk_claim_may_wait_past_a_single_statements_bound(postgres_dsn: str) -> None:
    """The read pool has the server cancel a statement at the single statements' bound;
    a thousand-row claim (``bounded_bulk``) is given ``BULK_BOUND`` times that, so one
    waiting on a row lock for longer than the single bound is answered, not cancelled."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    reads = await read_pool(postgres_dsn, min_size=1, max_size=2, timeout=0.1)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=reads, timeout=0.1)
        ids = (str(uuid.uuid4()),)
        ours = RequestClaim("acme", "imp-1", "ours", ids)
        async with pool.acquire() as other:
            held = other.transaction()
            await held.start()
            await other.execute(
                "INSERT INTO request_use (brand, request_id, fingerprint, event_ids)"
                " VALUES ('acme', 'imp-1', 'theirs', $1::uuid[])",
                [uuid.uuid4()],
            )
            claim = asyncio.ensure_future(view.claim_requests([ours]))
            await asyncio.sleep(0.5)  # five single bounds, waiting on the row's lock
            await held.rollback()
            uses = await claim
        with pytest.raises(asyncpg.QueryCanceledError):  # a single statement is still cut
            await reads.execute("SELECT pg_sleep(0.5)")
    finally:
        await reads.close()
        await pool.close()
    assert uses == [RequestUse("ours", ids)]


async def test_a_statement_the_server_cancels_is_a_store_unavailable_naming_it(
    postgres_dsn: str,
) -> None:
    """A statement PostgreSQL cancels at the read pool's limit is told as the store
    not answering in time, with the statement's name, not as an unknown failure."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    reads = await read_pool(postgres_dsn, min_size=1, max_size=2, timeout=0.1)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool, reads=reads, timeout=5)
        async with pool.acquire() as other, other.transaction():
            await other.execute(
                "INSERT INTO request_use (brand, request_id, fingerprint, event_ids)"
                " VALUES ('acme', 'req-1', 'theirs', $1::uuid[])",
                [uuid.uuid4()],
            )
            with pytest.raises(StoreUnavailable, match="cancelled take_request at its statement"):
                await view.take_request("acme", "req-1", "ours", [str(uuid.uuid4())])
    finally:
        await reads.close()
        await pool.close()
