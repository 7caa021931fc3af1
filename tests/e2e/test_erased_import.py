"""An old export imported again after an erasure, through the API and the CLI, on
real Kafka and on the embedded default. Under new import ids its records were
imported: they allowed nothing, but the name, the email and the texts erased were
stored again, readable in ListEvents and the proof packet, and the answer said
nothing. Each record dated at or before the erasure is now refused on its own
(FAILED_PRECONDITION, ``occurred_at``, naming the erasure's time), its opt-out not
held for review, in a dry run too; an opt-in dated after the erasure in the same
call is imported and allows again."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.retention import add_years
from tests.e2e.harness import TOKENS, Client, imported, opt_in, opt_out, opted_in, streamed
from tests.e2e.test_bulk_import import import_cli, iso, write_csv

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550193"
PHONE = "+14155553571"
NAME, EMAIL, STOP = "Grace Hopper", "grace@example.com", "STOP texting Grace please"
PERSONAL = (NAME, EMAIL, STOP)


def old_export(opted: datetime, stopped: datetime) -> list[api.ImportRecord]:
    """The old platform's export of PHONE: an opt-in with Grace's proof, then her STOP,
    each under an import id of its own (new each time it is built)."""
    grant = opt_in(PHONE, "acme", "promo", opted, request_id=uuid.uuid4().hex)
    grant.proof.name, grant.proof.email = NAME, EMAIL
    stop = opt_out(
        PHONE, "acme", "promo", stopped, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text=STOP
    )
    return [api.ImportRecord(opt_in=grant), api.ImportRecord(opt_out=stop)]


async def shown(c: Client, token: str) -> tuple[int, str]:
    """How many events ListEvents lists of PHONE at acme, and what it and the proof
    packet show, as text."""
    listed = await c.ListEvents(
        api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
    )
    packet = await c.GetProofPacket(
        api.GetProofPacketRequest(
            phone=PHONE, brand="acme", format=api.PACKET_FORMAT_JSON, at_least_as_fresh=token
        )
    )
    text = json_format.MessageToJson(listed) + json.dumps(json.loads(packet.document))
    return len(listed.events), text


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_an_old_export_imported_again_after_an_erasure_is_refused_by_record(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="erased-import", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        opted, stopped = clock.now - timedelta(minutes=20), clock.now - timedelta(minutes=10)
        first = await imported(c, *old_export(opted, stopped))
        assert (first.imported, list(first.refusals)) == (2, []), first

        clock.now = add_years(clock.now, 6)
        erasure = await c.RequestErasure(
            api.RequestErasureRequest(request_id=uuid.uuid4().hex, phone=PHONE, brand="acme")
        )
        erased_at = clock.now
        count, text = await shown(c, erasure.consistency_token)
        assert not any(said in text for said in PERSONAL), text

        clock.now += timedelta(minutes=2)
        fresh = api.ImportRecord(opt_in=opt_in(PHONE, "acme", "promo", clock.now))
        records = [*old_export(opted, stopped), fresh]
        reason = (
            f"the personal data of this number for 'acme' was erased at "
            f"{erased_at.isoformat()}, and this record is dated no later: what was erased "
            "is not imported again; a consent given since needs a time after it"
        )
        refused = [(i, "FAILED_PRECONDITION", [("occurred_at", reason)]) for i in (0, 1)]

        def said(answer: api.ImportConsentsResponse) -> tuple[int, int, list[object]]:
            return (
                answer.imported,
                answer.held_for_review,
                [
                    (r.index, r.code, [(v.field, v.description) for v in r.violations])
                    for r in answer.refusals
                ],
            )

        (dry,) = await streamed(c, [api.ImportConsentsRequest(records=records, dry_run=True)])
        assert said(dry) == (1, 0, refused), dry
        answer = await imported(c, *records)
        assert said(answer) == (1, 0, refused), answer

        # Nothing of the old records was stored again: the fresh opt-in alone.
        after, text = await shown(c, answer.consistency_token)
        assert after == count + 1
        assert not any(said in text for said in PERSONAL), text
        again = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=answer.consistency_token,
            )
        )
        assert (again.allowed, again.reason) == (True, api.REASON_CONSENT_ACTIVE), again

        # The CLI's summary names each refusal and why.
        grant = records[0].opt_in
        row = dict(phone=PHONE, brand="acme", campaign="promo")
        rows = [
            {
                **row,
                "type": "opt_in",
                "import_id": uuid.uuid4().hex,
                "occurred_at": iso(opted),
                "tier": "promotional",
                "method": "web_form",
                "proof.registered_at": iso(opted),
                "proof.name": NAME,
                "proof.ip_address": grant.proof.ip_address,
                "proof.form_url": grant.proof.form_url,
                "proof.consent_text": grant.proof.consent_text,
                "proof.screenshot_ref": grant.proof.screenshot_ref,
                "proof.screenshot_sha256": grant.proof.screenshot_sha256,
            },
            {
                **row,
                "type": "opt_out",
                "import_id": uuid.uuid4().hex,
                "occurred_at": iso(stopped),
                "channel": "keyword",
                "text": STOP,
            },
        ]
        export = write_csv(tmp_path / "export.csv", rows)
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 1, out + err
        assert "imported 0 of 2 records" in out, out
        assert re.search(
            r"2  FAILED_PRECONDITION  occurred_at: the personal data of this number for "
            r"'acme' was erased at .*what was erased is not imported again.*\(lines 2, 3\)",
            out,
        ), out
        assert "held for review: 0" in out and "; held for review" not in out, out

        last, text = await shown(c, answer.consistency_token)
        assert last == after
        assert not any(said in text for said in PERSONAL), text
