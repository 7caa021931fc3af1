"""Facts written in the clear before sealing existed (schema version 1: no key to
destroy) and then erased, through every reader, on the real Kafka ledger and on the
embedded default's PostgreSQL ledger. Only a read can hide them, so every reader must:
ListEvents and the proof packet read the erasure with them, while GetConsent, the
review queue and WatchConsentChanges show single facts and must look it up."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from google.protobuf import json_format

from ledger.ports import ConsistencyToken
from ledger.retention import add_years
from tests.builders import flagged, revoked
from tests.e2e.harness import Client, opted_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550188"
PHONE = "+14155553961"
SAID = "Ada Lovelace here, no more texts"
WROTE = "this is Ada, stop it"


async def every_reader(c: Client, token: str, up_to: int | str) -> dict[str, str]:
    """What each reader shows of PHONE at acme, as JSON text (the watch up to the
    offset ``up_to``, or the event of that id)."""
    shown = {}
    listed = await c.ListEvents(
        api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
    )
    shown["ListEvents"] = json_format.MessageToJson(listed)
    consent = await c.GetConsent(
        api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token)
    )
    shown["GetConsent"] = json_format.MessageToJson(consent)
    queue = await c.ListRevocationCandidates(
        api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
    )
    shown["ListRevocationCandidates"] = json_format.MessageToJson(queue)
    packet = await c.GetProofPacket(
        api.GetProofPacketRequest(
            phone=PHONE, brand="acme", format=api.PACKET_FORMAT_JSON, at_least_as_fresh=token
        )
    )
    shown["GetProofPacket"] = packet.document.decode()
    watched = []
    async for change in c.stub.WatchConsentChanges(
        api.WatchConsentChangesRequest(brand="acme"),
        metadata=[("authorization", f"Bearer {c.token}")],
        timeout=60,
    ):
        watched.append(json_format.MessageToJson(change))
        if isinstance(up_to, str):
            if change.event.event.event_id == up_to:
                break
        elif change.event.offset >= up_to:
            break
    shown["WatchConsentChanges"] = "\n".join(watched)
    return shown


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_facts_written_in_the_clear_read_erased_through_every_reader(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="in-clear", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        first = clock.now - timedelta(minutes=30)  # the opt-in's time
        # An opt-out's words and a reply held for review, as a version before sealing
        # wrote them: straight to the ledger, in the clear.
        assert runtime.ledger is not None
        await runtime.ledger.append(
            [revoked(first + timedelta(minutes=1), phone=PHONE, brand="acme", text=SAID)]
        )
        (last,) = await runtime.ledger.append(
            [flagged(first + timedelta(minutes=2), WROTE, phone=PHONE, brand="acme")]
        )
        assert last.event.sealed is None
        written = ConsistencyToken.after([last]).encode()
        up_to = last.position.offset
        before = await every_reader(c, written, up_to)
        assert SAID in before["GetConsent"] and WROTE in before["ListRevocationCandidates"]

        clock.now = add_years(clock.now, 6)
        erased = await c.RequestErasure(
            api.RequestErasureRequest(
                request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", reference="DSR-8"
            )
        )
        # The watch goes on to the erasure: a watcher learns the number's consents
        # ended, as CanSend and GetConsent tell (the watch would wait for it forever).
        after = await every_reader(c, erased.consistency_token, erased.event_id)
        for reader, text in after.items():
            assert SAID not in text and WROTE not in text, reader
        assert '"[erased]"' in after["GetConsent"]
        assert '"[erased]"' in after["ListRevocationCandidates"]
        assert '"[erased]"' in after["WatchConsentChanges"]
