"""``DigestReplica`` on a real PostgreSQL: the copy in memory always equals the view
at the positions it reports, through incremental changes, rebuilds and concurrent
writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from ledger.digest import Digest
from ledger.events import ANY_BRAND, SubscriberEvent
from ledger.ports import Stream, UnreadableDigests
from services.adapters.digest_replica import DigestReplica
from services.adapters.postgres_view import PostgresConsentView, read_pool
from services.wire.digest import FORMAT as DIGEST_FORMAT
from tests.builders import flagged
from tests.conformance.view_suite import (
    T0,
    DigestReadsSuite,
    Positions,
    flag,
    generate_events,
    grant,
    revoke,
    sent,
)

pytestmark = pytest.mark.postgres

PHONES = [f"+1415555{n:04d}" for n in range(400, 440)]


class TestDigestReplicaReads(DigestReadsSuite):
    """The replica answers what the view it wraps answers."""

    @pytest.fixture
    def view(self, pool: asyncpg.Pool) -> PostgresConsentView:
        return PostgresConsentView(pool)

    @pytest.fixture
    def reads(self, pool: asyncpg.Pool, view: PostgresConsentView) -> DigestReplica:
        return DigestReplica(pool, view)


async def _all(
    source: PostgresConsentView | DigestReplica, brands: Sequence[str]
) -> dict[str, Digest]:
    """Every digest ``source`` has for PHONES towards ``brands``."""
    return {
        f"{brand} {phone}": digest
        for brand in brands
        for phone, digest in (await source.digests(brand, PHONES)).items()
    }


async def test_the_first_refresh_loads_the_view_and_later_ones_follow_it(
    pool: asyncpg.Pool,
) -> None:
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view, chunk=7)  # several chunks for the first load
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "deals", T0) for p in PHONES[:20]])
    )
    assert await replica.positions(Stream.SUBSCRIBERS) == await view.positions(Stream.SUBSCRIBERS)
    assert await _all(replica, ["acme"]) == await _all(view, ["acme"])
    assert replica.loads == 1 and replica.size == 20

    later = [
        revoke(PHONES[3], "acme", "deals", T0 + timedelta(hours=1)),  # a change
        sent(PHONES[4], "acme", "deals", T0 + timedelta(hours=2)),
        grant(PHONES[30], "acme", "deals", T0),  # a new number
        grant(PHONES[3], "globex", "news", T0),  # the same number, another brand
        revoke(PHONES[5], "acme", None, T0 + timedelta(hours=3)),  # brand-wide
    ]
    await view.apply(Stream.SUBSCRIBERS, pos.record(later))
    before = await replica.digests("acme", [PHONES[3]])
    assert before[PHONES[3]].campaign("deals").revocation is None  # not refreshed yet

    assert await replica.positions(Stream.SUBSCRIBERS) == await view.positions(Stream.SUBSCRIBERS)
    assert await _all(replica, ["acme", "globex"]) == await _all(view, ["acme", "globex"])
    assert replica.loads == 1  # followed, not reloaded
    assert replica.size == 22
    revoked = (await replica.digests("acme", [PHONES[3]]))[PHONES[3]]
    assert revoked.campaign("deals").revocation is not None
    assert await replica.digests("acme", [PHONES[39]]) == {}  # no fact: left out
    assert await replica.digests("initech", PHONES) == {}


async def test_campaign_positions_are_the_views(pool: asyncpg.Pool) -> None:
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    events = generate_events(60, phones=10, brands=2, campaigns=2)
    pos = Positions()
    campaigns = [r for r in pos.record(events) if not isinstance(r.event, SubscriberEvent)]
    await view.apply(Stream.CAMPAIGNS, campaigns)
    assert await replica.positions(Stream.CAMPAIGNS) == await view.positions(Stream.CAMPAIGNS)
    assert await replica.positions(Stream.CAMPAIGNS) != {}


async def test_a_rebuild_is_loaded_afresh_even_when_positions_grew_past_the_copy(
    pool: asyncpg.Pool,
) -> None:
    """After reset, the view may have been folded beyond the copy's positions before
    the replica looks again. Reading only the offsets past its own would miss rows
    rewritten below them; the epoch makes it load everything."""
    view = PostgresConsentView(pool)
    reloads: list[int] = []
    replica = DigestReplica(pool, view, on_reload=lambda: reloads.append(replica.size))
    first = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, first.record([grant(p, "acme", "deals", T0) for p in PHONES[:8]])
    )
    await replica.refresh()
    assert replica.size == 8
    assert reloads == []  # the first load is the start's: set up by the caller

    await view.reset()
    # A different ledger folded to more positions than before (as a rebuild after a
    # change in how digests are made would rewrite rows the copy holds).
    second = Positions()
    events = [revoke(p, "acme", "deals", T0) for p in PHONES[:8]]
    events += [grant(p, "acme", "deals", T0) for p in PHONES[8:24]]
    await view.apply(Stream.SUBSCRIBERS, second.record(events))
    old = replica._positions
    new = await view.positions(Stream.SUBSCRIBERS)
    assert all(new.get(p, 0) >= o for p, o in old.items())  # the case the epoch is for

    await replica.refresh()
    assert replica.loads == 2
    assert reloads == [24]  # told, once the new copy is in place
    assert await _all(replica, ["acme"]) == await _all(view, ["acme"])
    assert all(
        d.campaign("deals").grant is None
        for d in (await replica.digests("acme", PHONES[:8])).values()
    )


async def test_positions_that_went_backwards_reload_too(pool: asyncpg.Pool) -> None:
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    await view.apply(
        Stream.SUBSCRIBERS, Positions().record([grant(p, "acme", "deals", T0) for p in PHONES])
    )
    await replica.refresh()
    await pool.execute("UPDATE projection_offset SET next_offset = 0")
    await replica.refresh()
    assert replica.loads == 2


async def test_rows_without_a_usable_digest_are_copied_from_their_snapshot(
    pool: asyncpg.Pool,
) -> None:
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS,
        pos.record(
            [grant(p, "acme", "deals", T0) for p in PHONES[:3]]
            + [revoke(PHONES[1], "acme", "deals", T0 + timedelta(hours=1))]
        ),
    )
    written = await view.digests("acme", PHONES[:3])
    await pool.execute("UPDATE subscriber_state SET digest = NULL WHERE phone = $1", PHONES[0])
    await pool.execute(
        "UPDATE subscriber_state SET digest = '\\x7f00'::bytea WHERE phone = $1", PHONES[1]
    )
    await replica.refresh()
    assert await replica.digests("acme", PHONES[:3]) == written


async def test_a_copy_never_reports_positions_its_digests_do_not_reflect(
    pool: asyncpg.Pool,
) -> None:
    """While a projector applies opt-outs, every refresh's positions and digests agree:
    each opt-out at an offset below the reported position is in the copy."""
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "deals", T0) for p in PHONES])
    )
    await replica.refresh()
    stops = pos.record([revoke(p, "acme", "deals", T0 + timedelta(hours=1)) for p in PHONES])

    async def project() -> None:
        for r in stops:
            await view.apply(Stream.SUBSCRIBERS, [r])

    writer = asyncio.create_task(project())
    checks = 0
    try:
        while True:
            done = writer.done()
            positions = await replica.positions(Stream.SUBSCRIBERS)
            copied = await replica.digests("acme", PHONES)
            for r in stops:
                phone = r.event.phone  # type: ignore[attr-defined]
                applied = r.position.offset < positions.get(r.position.partition, 0)
                revoked = copied[phone].campaign("deals").revocation is not None
                assert applied == revoked, (phone, r.position, positions)
            checks += 1
            if done:
                break
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await view.settle()
    await writer
    assert replica.loads == 1 and checks > 1
    assert all(d.campaign("deals").revocation is not None for d in copied.values())


async def test_every_brands_digests_carry_a_phone_wide_stop(pool: asyncpg.Pool) -> None:
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    pos = Positions()
    stop = replace(flag(PHONES[0], ANY_BRAND, T0), text="STOP", unattributed=True)
    await view.apply(Stream.SUBSCRIBERS, pos.record([grant(PHONES[0], "acme", "deals", T0), stop]))
    await replica.refresh()
    for brand in ("acme", "globex"):
        copied = await replica.digests(brand, [PHONES[0], PHONES[1]])
        assert copied == await view.digests(brand, [PHONES[0], PHONES[1]])
        assert [p.event_id for p in copied[PHONES[0]].pending] == [str(stop.event_id)]
    assert (await replica.digests("acme", [PHONES[0]]))[PHONES[0]].campaign("deals").grant


async def test_a_refresh_that_outgrows_the_index_grows_it_and_follows_the_view(
    pool: asyncpg.Pool,
) -> None:
    """A refresh bringing more new numbers than the loaded index has room for grows
    it first (aside, in a worker thread), and the copy still equals the view."""
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "deals", T0) for p in PHONES[:4]])
    )
    await replica.refresh()
    index_bytes = replica.stats()["index_bytes"]  # sized for four

    more = [grant(p, "acme", "deals", T0) for p in PHONES[4:]]
    await view.apply(Stream.SUBSCRIBERS, pos.record(more))
    await replica.refresh()

    assert replica.stats()["index_bytes"] > index_bytes
    assert replica.loads == 1 and replica.size == len(PHONES)
    assert await _all(replica, ["acme"]) == await _all(view, ["acme"])


async def test_a_compacted_copy_is_swapped_in_and_answers_as_the_view(
    pool: asyncpg.Pool,
) -> None:
    """Digests that grow and move, new campaign names (shapes) and reply texts
    (strings) each day leave dead bytes in the copy; refreshes compact it a step at
    a time, taking writes meanwhile, and swap the compacted copy in. After every
    refresh the replica answers what the view answers, before, during and after."""
    view = PostgresConsentView(pool)
    # The smallest steps and no floor: a compaction spans several refreshes here.
    replica = DigestReplica(pool, view, compact_step=0.0, compact_floor=0)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "welcome", T0) for p in PHONES])
    )
    await replica.refresh()
    for day in range(1, 11):
        at = T0 + timedelta(days=day)
        events = [
            *(grant(p, "acme", f"day-{day}", at) for p in PHONES[day % 2 :: 2]),
            *(sent(p, "acme", f"day-{day}", at + timedelta(hours=1)) for p in PHONES[::3]),
            *(
                flagged(at, f"day {day}: who is this {p}?", phone=p, brand="acme")
                for p in PHONES[day % 3 :: 4]
            ),
        ]
        await view.apply(Stream.SUBSCRIBERS, pos.record(events))
        for _ in range(4):
            await replica.refresh()
            assert await _all(replica, ["acme"]) == await _all(view, ["acme"])

    assert replica.compactions >= 2
    assert replica.loads == 1 and replica.size == len(PHONES)
    assert replica.stats()["dead_bytes"] < replica.stats()["table_bytes"]


async def test_a_rebuild_during_a_compaction_drops_it_for_the_fresh_load(
    pool: asyncpg.Pool,
) -> None:
    """A compaction under way copies the copy a rebuild replaces: the fresh load
    takes its place, and the compaction, were it swapped in later, would bring the
    old digests back. It is dropped."""
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view, compact_step=0.0, compact_floor=0)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, pos.record([grant(p, "acme", "welcome", T0) for p in PHONES])
    )
    await replica.refresh()
    day = 0
    while replica._compaction is None:  # new campaign names until one is due
        day += 1
        at = T0 + timedelta(days=day)
        await view.apply(
            Stream.SUBSCRIBERS, pos.record([grant(p, "acme", f"day-{day}", at) for p in PHONES])
        )
        await replica.refresh()
    await view.reset()
    again = Positions()
    await view.apply(
        Stream.SUBSCRIBERS, again.record([revoke(p, "acme", "welcome", T0) for p in PHONES])
    )

    for _ in range(20):  # enough refreshes for any compaction to finish
        await replica.refresh()

    assert replica.loads == 2 and replica.compactions == 0
    assert await _all(replica, ["acme"]) == await _all(view, ["acme"])
    assert all(
        d.campaign("welcome").grant is None
        for d in (await replica.digests("acme", PHONES)).values()
    )


async def test_a_load_waits_past_a_single_statements_bound_on_a_busy_server(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    """The service reads the replica through the read pool, whose server cancels a
    statement at the single statements' bound. Reading the whole view, or a change of
    more than a chunk, is given ``BULK_BOUND`` times that: a load that waits longer
    than one bound (here on a table lock) completes, where it used to fail the
    service's start."""
    view = PostgresConsentView(pool)
    reads = await read_pool(postgres_dsn, min_size=1, max_size=2, timeout=0.1)
    try:
        replica = DigestReplica(reads, view, chunk=7, timeout=0.1)
        pos = Positions()

        async def while_locked(events: Sequence[SubscriberEvent]) -> None:
            await view.apply(Stream.SUBSCRIBERS, pos.record(list(events)))
            async with pool.acquire() as other, other.transaction():
                await other.execute("LOCK TABLE subscriber_state IN ACCESS EXCLUSIVE MODE")
                refresh = asyncio.ensure_future(replica.positions(Stream.SUBSCRIBERS))
                await asyncio.sleep(0.5)  # five single bounds, waiting on the lock
            await refresh

        await while_locked([grant(p, "acme", "deals", T0) for p in PHONES[:20]])  # a load
        await while_locked([grant(p, "acme", "deals", T0) for p in PHONES[20:30]])  # a change
        with pytest.raises(asyncpg.QueryCanceledError):  # a single statement is still cut
            await reads.execute("SELECT pg_sleep(0.5)")
    finally:
        await reads.close()
    assert replica.loads == 1 and replica.size == 30
    assert await _all(replica, ["acme"]) == await _all(view, ["acme"])


# A digest in the current format that does not decode: bytes MessagePack refuses, and
# a well-formed array of the wrong shape (the view's stored_digest refused both).
_GARBLED = bytes([DIGEST_FORMAT, 0xC1])
_MISSHAPEN = bytes([DIGEST_FORMAT, 0x92, 0x01, 0x02])


async def _garble(pool: asyncpg.Pool, brand: str, phone: str, data: bytes) -> None:
    await pool.execute(
        "UPDATE subscriber_state SET digest = $1 WHERE brand = $2 AND phone = $3",
        data,
        brand,
        phone,
    )


async def test_an_unreadable_digest_fails_only_its_own_number_until_it_is_rewritten(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """One corrupt row used to make the load raise, and every read (every brand's,
    every number's) then failed closed: the service did not even start."""
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view, partition_for=lambda phone: 7)
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS,
        pos.record([grant(p, b, "deals", T0) for p in PHONES[:4] for b in ("acme", "globex")]),
    )
    await _garble(pool, "acme", PHONES[1], _GARBLED)
    await _garble(pool, "acme", PHONES[2], _MISSHAPEN)
    good = await view.digests("acme", [PHONES[0], PHONES[3]])

    caplog.set_level(logging.ERROR, "services.adapters.digest_replica")
    await replica.refresh()  # the load goes on past them
    assert replica.unreadable == 2
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and all("brand acme (partition 7)" in m for m in logged)
    assert await replica.digests("acme", [PHONES[0], PHONES[3]]) == good
    assert set(await replica.digests("globex", PHONES[:4])) == set(PHONES[:4])
    with pytest.raises(UnreadableDigests) as caught:
        await replica.digests("acme", PHONES[:4])
    assert caught.value.phones == (PHONES[1], PHONES[2])
    assert caught.value.found == good  # the others, as read
    # The view itself says the same of its rows.
    with pytest.raises(UnreadableDigests) as caught:
        await view.digests("acme", PHONES[:4])
    assert caught.value.phones == (PHONES[1], PHONES[2]) and caught.value.found == good

    # The projector rewrites one: it is answered again, from the new row.
    later = T0 + timedelta(hours=1)
    await view.apply(Stream.SUBSCRIBERS, pos.record([revoke(PHONES[1], "acme", "deals", later)]))
    await replica.refresh()
    assert replica.unreadable == 1
    rewritten = (await replica.digests("acme", [PHONES[1]]))[PHONES[1]]
    assert rewritten.campaign("deals").revocation is not None

    # A refresh that reads a corrupt row masks the digest the copy held before it,
    # which no longer says what the view holds.
    await view.apply(Stream.SUBSCRIBERS, pos.record([revoke(PHONES[3], "acme", "deals", later)]))
    await _garble(pool, "acme", PHONES[3], _GARBLED)
    await replica.refresh()
    assert replica.unreadable == 2
    with pytest.raises(UnreadableDigests) as caught:
        await replica.digests("acme", [PHONES[3]])
    assert caught.value.phones == (PHONES[3],) and caught.value.found == {}

    # A rebuild's load reads every row again: the rows still corrupt stay unreadable.
    await pool.execute("UPDATE projection_epoch SET epoch = epoch + 1")
    await replica.refresh()
    assert replica.loads == 2 and replica.unreadable == 2
    logged = [r for r in caplog.records if r.name == "services.adapters.digest_replica"]
    assert len(logged) == 3  # each logged once: the reload says nothing again


async def test_an_unreadable_phone_wide_row_fails_the_number_for_every_brand(
    pool: asyncpg.Pool,
) -> None:
    """A STOP whose brand is unknown (kept under ANY_BRAND) concerns every brand: a
    number whose such row cannot be read is not answered for any."""
    view = PostgresConsentView(pool)
    replica = DigestReplica(pool, view)
    await view.apply(
        Stream.SUBSCRIBERS,
        Positions().record(
            [grant(p, "acme", "deals", T0) for p in PHONES[:2]]
            + [replace(flag(PHONES[0], ANY_BRAND, T0), text="STOP", unattributed=True)]
        ),
    )
    await _garble(pool, ANY_BRAND, PHONES[0], _MISSHAPEN)
    await replica.refresh()
    with pytest.raises(UnreadableDigests) as caught:
        await replica.digests("acme", PHONES[:2])
    assert caught.value.phones == (PHONES[0],) and set(caught.value.found) == {PHONES[1]}
    with pytest.raises(UnreadableDigests):
        await replica.digests("globex", [PHONES[0]])
