"""Every kind of event the ledger has, projected into a real PostgreSQL: batches
just under and over the size at which new rows go in by ``COPY``, one event at a
time, and a rebuild write the same rows; a batch delivered again changes nothing;
and what an erasure erased stays erased after a rebuild."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgpack
import pytest
from consent.v1 import ledger_pb2

from ledger import digest as digests_code
from ledger.campaigns import CampaignPolicy
from ledger.digest import Digest, digest_of
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    PROVIDER_OPT_OUT_PREFIX,
    REFUSED_PREFIX,
    REUSED_ID_PREFIX,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentRevoked,
    ConsentTier,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    LegalHoldPlaced,
    LegalHoldReleased,
    ListSource,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
    SubjectErased,
    SubscriberLocated,
)
from ledger.keywords import Intent
from ledger.personal_data import ERASED
from ledger.ports import Stream
from ledger.reread import reread_hold
from services.adapters.digest_replica import DigestReplica
from services.adapters.memory_keys import InMemorySubjectKeys
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.adapters.postgres_view import (
    _COPY_AT,
    PROJECTION_TABLES,
    PostgresConsentView,
    _Writes,
)
from services.personal_data import PersonalData
from services.projector import Projector, rebuild
from services.wire.codec import encode_event, recorded_from_stored
from tests.builders import T0, proof
from tests.integration.test_projection_batches import mixed_stream
from tests.integration.test_projector_postgres import (
    DiesAfterCommit,
    ProcessDied,
    dump,
    filled_ledger,
)

pytestmark = pytest.mark.postgres

BRANDS = ("acme", "globex")
CAMPAIGNS = ("promo", "alerts")
PHONES = [f"+1415555{n:04d}" for n in range(120)]


def _number(brand: str, campaign: str) -> str:
    return f"+1202555{BRANDS.index(brand):02d}{CAMPAIGNS.index(campaign):02d}"


def _id() -> uuid.UUID:
    return uuid.uuid4()


def _written_as_v1(event: LedgerEvent) -> bytes:
    """``event`` as a writer of its class's version 1 stored it (in the clear)."""
    env = ledger_pb2.EventEnvelope()
    env.ParseFromString(encode_event(event))
    env.schema_version = 1
    return env.SerializeToString()


async def every_kind() -> tuple[list[LedgerEvent], dict[uuid.UUID, bytes], PersonalData]:
    """A stream of every event kind: campaign facts first, then for each phone and
    brand an opt-in (sealed, or in the clear, some as version 1 wrote them, some
    imported, some promotional given verbally or imported, which allow
    informational sends only), a location, an age, sends with their numbers and
    outcomes, a flagged reply held or resolved (a "revoked" with the opt-out it
    writes), holds of a provider's report, of an opt-out refused for its details
    or its request id, of a text read again under newer rules, and of a STOP of
    unknown brand (``*``), opt-outs of a campaign or of the brand, legal holds, and
    erasures with the keys they destroy (some followed by a new opt-in).
    Returns the events, the stored bytes of those written as v1, and the sealer."""
    personal = PersonalData(InMemorySubjectKeys())
    events: list[LedgerEvent] = []
    v1: dict[uuid.UUID, bytes] = {}
    for brand in BRANDS:
        for campaign in CAMPAIGNS:
            events.append(
                CampaignDefined(
                    event_id=_id(),
                    occurred_at=T0 - timedelta(days=30),
                    brand=brand,
                    campaign=campaign,
                    policy=CampaignPolicy(sender_numbers=(_number(brand, campaign),)),
                )
            )
    events.append(
        BrandPolicySet(
            event_id=_id(),
            occurred_at=T0 - timedelta(days=29),
            brand="globex",
            campaign=BRAND_SETTINGS,
            revoke_all=True,
        )
    )
    clock = T0
    for n, phone in enumerate(PHONES):
        for brand in BRANDS:
            campaign = CAMPAIGNS[n % 2]

            def at(minutes: int, start: datetime = clock) -> datetime:
                return start + timedelta(minutes=minutes)

            common: dict[str, Any] = {"phone": phone, "brand": brand}
            grant = ConsentGranted(
                event_id=_id(),
                occurred_at=at(0),
                **common,
                campaign=campaign,
                tier=ConsentTier.PROMOTIONAL,
                method=(
                    (CollectionMethod.VERBAL, CollectionMethod.API_IMPORT)[n % 2]
                    if n % 7 == 1
                    else CollectionMethod.WEB_FORM
                ),
                proof=proof(at(0), region="CA"),
                source=ListSource.PURCHASED if n % 7 == 3 else ListSource.FIRST_PARTY,
            )
            located = SubscriberLocated(
                event_id=_id(), occurred_at=at(1), **common, region="NY", detail="said so"
            )
            if n % 3 == 0:  # in the clear, as written before sealing
                v1[grant.event_id] = _written_as_v1(grant)
                v1[located.event_id] = _written_as_v1(located)
                mine = [grant, located]
            else:
                mine = await personal.seal([grant, located])
            send = MessageSent(
                event_id=_id(),
                occurred_at=at(2),
                **common,
                message_id=f"m-{n}-{brand}",
                campaign=campaign,
                kind=MessageKind.REGULAR,
                included_opt_out_language=True,
                identified_sender=True,
                from_number=_number(brand, campaign),
            )
            flag = RevocationCandidateFlagged(
                event_id=_id(),
                occurred_at=at(4),
                **common,
                inbound_message_id=f"in-{n}-{brand}",
                text="please no more",
                to_number=_number(brand, campaign),
                campaign=campaign,
            )
            mine += [
                AgeVerified(event_id=_id(), occurred_at=at(1), **common, method="id_scan"),
                send,
                DeliveryOutcomeReported(
                    event_id=_id(),
                    occurred_at=at(3),
                    **common,
                    message_id=send.message_id,
                    campaign=campaign,
                    outcome=list(DeliveryOutcome)[n % 3],
                    error_code="30003" if n % 3 else "",
                ),
                flag,
            ]
            if n % 4 != 0:  # else the hold stays pending
                resolution = list(CandidateResolution)[n % len(CandidateResolution)]
                review = {"request_id": f"review-{n}-{brand}", "request_fingerprint": f"f{n}"}
                if resolution is CandidateResolution.REVOKED:  # as the review writes it
                    mine.append(
                        ConsentRevoked(
                            event_id=_id(),
                            occurred_at=at(5),
                            **common,
                            **review,
                            campaign=None,
                            channel=RevocationChannel.FREE_TEXT,
                            text=f"resolved candidate {flag.event_id}",
                        )
                    )
                mine.append(
                    RevocationCandidateResolved(
                        event_id=_id(),
                        occurred_at=at(5),
                        **common,
                        **review,
                        candidate_event_id=flag.event_id,
                        resolution=resolution,
                        resolved_by="reviewer",
                    )
                )
            mine += await _newer_holds(personal, n, brand, campaign, at)
            if n % 5 == 1:
                mine.append(
                    ConsentRevoked(
                        event_id=_id(),
                        occurred_at=at(6),
                        **common,
                        campaign=None if n % 2 else campaign,
                        channel=RevocationChannel.KEYWORD,
                        text="STOP",
                    )
                )
            if n % 6 == 2:
                mine.append(
                    LegalHoldPlaced(event_id=_id(), occurred_at=at(7), **common, hold_id="h1")
                )
                if n % 12 == 2:
                    mine.append(
                        LegalHoldReleased(event_id=_id(), occurred_at=at(8), **common, hold_id="h1")
                    )
            if n % 5 in (0, 3):
                keys = await personal.keys.live(phone, brand)
                mine.append(
                    SubjectErased(
                        event_id=_id(),
                        occurred_at=at(9),
                        **common,
                        requested_by="dpo",
                        key_ids=tuple(keys),
                    )
                )
                await personal.keys.destroy(phone, brand, keys)
                if n % 10 == 3:  # a fresh opt-in after the erasure
                    mine += await personal.seal(
                        [dataclasses.replace(grant, event_id=_id(), occurred_at=at(10))]
                    )
            events += mine
        clock += timedelta(minutes=11)
        if n % 13 == 0:
            events.append(
                CampaignPolicyChanged(
                    event_id=_id(),
                    occurred_at=clock,
                    brand="acme",
                    campaign="promo",
                    policy=CampaignPolicy(daily_cap=2, sender_numbers=(_number("acme", "promo"),)),
                )
            )
    return events, v1, personal


async def _newer_holds(
    personal: PersonalData, n: int, brand: str, campaign: str, at: Any
) -> list[LedgerEvent]:
    """The holds of the newest kinds for the ``n``-th phone and ``brand``: a disguised
    STOP recorded as a conversation and held when read again, a provider's report
    of an opt-out, an opt-out refused for its details or its request id, and a STOP
    of unknown brand (``*``), some of them dismissed."""
    phone = PHONES[n]
    common: dict[str, Any] = {"phone": phone, "brand": brand}
    held: list[LedgerEvent] = []
    if n % 8 == 5:
        text = InboundMessageReceived(
            event_id=_id(),
            occurred_at=at(4),
            **common,
            message_id=f"text-{n}-{brand}",
            to_number=_number(brand, campaign),
            body="ST\u00d8P",
            campaign=campaign,
            intent=Intent.CONVERSATION.value,
        )
        held += await personal.seal([text])
        held.append(reread_hold(text, recorded_by="service:reread"))
    if n % 9 in (4, 7):
        prefix = (
            PROVIDER_OPT_OUT_PREFIX if n % 9 == 4 else (REFUSED_PREFIX, REUSED_ID_PREFIX)[n % 2]
        )
        held.append(
            RevocationCandidateFlagged(
                event_id=_id(),
                occurred_at=at(4),
                **common,
                request_id=f"{prefix}{n}-{brand}",
                inbound_message_id="",
                text="STOP",
            )
        )
    if n % 8 == 6 and brand == BRANDS[0]:  # a STOP of unknown brand denies every brand
        wide = RevocationCandidateFlagged(
            event_id=_id(),
            occurred_at=at(4),
            phone=phone,
            brand=ANY_BRAND,
            inbound_message_id=f"wide-{n}",
            text="STOP",
            to_number="+12025559999",
            unattributed=True,
        )
        held.append(wide)
        if n % 16 == 14:
            held.append(
                RevocationCandidateResolved(
                    event_id=_id(),
                    occurred_at=at(6),
                    phone=phone,
                    brand=ANY_BRAND,
                    candidate_event_id=wide.event_id,
                    resolution=CandidateResolution.DISMISSED,
                    resolved_by="operator",
                )
            )
    return held


async def _holds_survive_rebuilds_and_older_digests(
    pool: asyncpg.Pool,
    ledger: InMemoryLedger,
    view: PostgresConsentView,
    memory: InMemoryConsentView,
    incremental: dict[str, list[tuple[Any, ...]]],
) -> None:
    """Each number held for review (of its brand, or of ``*``) has every status row
    ``pending_review`` naming a hold its digest lists; a rebuild by two workers, and
    one interrupted and run again, write the incremental rows; and digests stored in
    older formats are read as the current code digests them: no hold lost, no
    unwritten promotional opt-in read as promotional."""
    expected = {brand: await memory.digests(brand, PHONES) for brand in BRANDS}
    states = {b: await memory.subscriber_states(b, PHONES) for b in (*BRANDS, ANY_BRAND)}
    held_by_any_brand_only = 0
    for phone, brand, campaign, status, *_, held_id in incremental["consent_status"]:
        pending = {p.event_id for p in expected[brand][phone].pending}
        assert (status == "pending_review") == bool(pending), (phone, brand, campaign)
        assert (str(held_id) if held_id else None) in (pending or {None})
        own = states[brand][phone].pending_candidates()
        held_by_any_brand_only += bool(pending) and not own
    assert held_by_any_brand_only

    await view.begin_rebuild()
    await asyncio.gather(
        *(
            Projector(ledger, PostgresConsentView(pool)).catch_up(
                batch_size=_COPY_AT + 50, share=share, shares=2
            )
            for share in range(2)
        )
    )
    await view.finish_rebuild()
    assert await dump(view) == incremental
    assert not await view.begin_rebuild()
    with pytest.raises(ProcessDied):
        await Projector(ledger, DiesAfterCommit(view, die_after=3)).catch_up(
            batch_size=_COPY_AT - 1
        )
    total = sum([sum((await ledger.end_offsets(stream)).values()) for stream in Stream])
    assert await rebuild(ledger, view, batch_size=_COPY_AT - 1) == total - 3 * (_COPY_AT - 1)
    assert await dump(view) == incremental

    # As format 17 wrote them (an unwritten promotional opt-in read as promotional),
    # 16 (no time of the person's text a review's opt-out answers) and 2 (none).
    def as_written_by(version: int, digest: Digest) -> bytes | None:
        fields = tuple(digest)[: -1 if version == 16 else None]
        return bytes([version]) + msgpack.packb(fields, use_bin_type=True)

    older, rewritten = 0, []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(digests_code, "reached_tier", lambda tier, method: int(tier))
        for n, (phone, brand, *_) in enumerate(incremental["subscriber_state"]):
            stale = digest_of(states[brand][phone])
            older += brand in BRANDS and stale != expected[brand][phone]
            data = (as_written_by(17, stale), as_written_by(16, stale), None)[n % 3]
            rewritten.append((phone, brand, data))
    await pool.executemany(
        "UPDATE subscriber_state SET digest = $3 WHERE phone = $1 AND brand = $2", rewritten
    )
    assert older
    replica = DigestReplica(pool, view)
    for brand in BRANDS:
        assert await PostgresConsentView(pool).digests(brand, PHONES) == expected[brand]
        assert await replica.digests(brand, PHONES) == {}  # not loaded yet
    await replica.refresh()
    for brand in BRANDS:
        assert await replica.digests(brand, PHONES) == expected[brand]


class StoredLedger(InMemoryLedger):
    """Reads its events back from the bytes a ledger stores, some as v1 wrote them."""

    def __init__(self, partitions: int, v1: dict[uuid.UUID, bytes]) -> None:
        super().__init__(partitions)
        self.v1 = v1

    async def read(self, *args: Any, **kwargs: Any) -> list[Recorded]:
        return [
            recorded_from_stored(
                self.v1.get(r.event.event_id) or encode_event(r.event), r.position, r.recorded_at
            )
            for r in await super().read(*args, **kwargs)
        ]


async def test_every_kind_projects_alike_in_any_batch_and_in_a_rebuild(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, v1, personal = await every_kind()
    ledger = StoredLedger(2, v1)
    copied: set[str] = set()
    send = _Writes.send

    def noted(writes: _Writes, table: str, rows: list[Any], *, new: bool = False) -> None:
        if new and len(rows) >= _COPY_AT:
            copied.add(table)
        send(writes, table, rows, new=new)

    monkeypatch.setattr(_Writes, "send", noted)
    recorded = await ledger.append(events)
    kinds = {type(r.event).__name__ for r in recorded}
    assert len(kinds) == 17 - 2, sorted(kinds)  # all but a resume and a reconfirm
    view = PostgresConsentView(pool)

    await Projector(ledger, view).catch_up(batch_size=1)
    one_by_one = await dump(view)
    assert one_by_one["flagged_reply"] and one_by_one["message_use"]
    results = {}
    for batch in (_COPY_AT - 1, _COPY_AT + 50, 5000):
        await view.reset()
        await Projector(ledger, view).catch_up(batch_size=batch)
        results[batch] = await dump(view)
        if batch < _COPY_AT:
            assert not copied
    assert copied == {"event_copy", "subscriber_state", "consent_status"}
    assert await rebuild(ledger, view, batch_size=_COPY_AT + 50) == len(recorded)
    results[0] = await dump(view)
    for batch, found in results.items():
        for table in PROJECTION_TABLES:
            assert found[table] == one_by_one[table], (batch, table)

    # The states are the in-memory view's, which shares no code with this one.
    memory = InMemoryConsentView()
    await Projector(ledger, memory).catch_up(batch_size=5000)
    for brand in BRANDS:
        assert await view.subscriber_states(brand, PHONES) == await memory.subscriber_states(
            brand, PHONES
        )
        assert await view.digests(brand, PHONES) == await memory.digests(brand, PHONES)

    await _holds_survive_rebuilds_and_older_digests(pool, ledger, view, memory, one_by_one)

    # After the rebuild, what an erasure erased reads erased and allows nothing.
    erased_keys = {
        (r.event.phone, r.event.brand): r.position.offset
        for r in recorded
        if isinstance(r.event, SubjectErased)
    }
    names: dict[bool, list[str]] = {True: [], False: []}
    for (phone, brand), cut in erased_keys.items():
        history = await personal.open(await view.history(phone, brand))
        for r in history:
            if isinstance(r.event, ConsentGranted):
                names[r.position.offset < cut].append(r.event.proof.name)
        state = (await view.subscriber_states(brand, [phone]))[phone]
        assert state.erased is not None and state.erased.position.offset == cut
    # Sealed and in-the-clear proofs before an erasure read erased; a fresh opt-in's not.
    assert len(names[True]) == len(erased_keys)
    assert set(names[True]) == {ERASED}
    assert names[False] and set(names[False]) == {proof(T0).name}

    # A batch delivered again changes nothing.
    before = await dump(view)
    for stream in Stream:
        for partition in await ledger.end_offsets(stream):
            again = await InMemoryLedger.read(ledger, stream, partition, 0, 5000)
            await view.apply(stream, again)
    assert await dump(view) == before


@pytest.mark.parametrize("batch", [_COPY_AT - 1, _COPY_AT + 50])
async def test_a_rebuild_keeping_request_ids_writes_what_the_projector_wrote(
    pool: asyncpg.Pool, batch: int
) -> None:
    """A rebuild keeps ``request_use`` (writers took ids there): the facts of a request
    whose id another request holds stay out, and reused message ids count once, as
    they did when the projector first met them."""
    ledger, _ = await filled_ledger(mixed_stream(1500))
    view = PostgresConsentView(pool)
    await Projector(ledger, view).catch_up(batch_size=300)
    incremental = await dump(view)
    taken = await pool.fetch("SELECT * FROM request_use ORDER BY brand, request_id")
    assert taken

    await rebuild(ledger, view, batch_size=batch)

    rebuilt = await dump(view)
    for table in PROJECTION_TABLES:
        assert rebuilt[table] == incremental[table], table
    assert await pool.fetch("SELECT * FROM request_use ORDER BY brand, request_id") == taken
