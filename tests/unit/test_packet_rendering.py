"""The packet rendered (``services.packets``): JSON, an HTML page with the timeline as
SVG, and a PDF whose text is read back with pypdf and checked for what it shows."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pypdf

from ledger.events import ConsentProof
from ledger.packet import assemble
from services.packets import Format, render, timeline, to_document
from tests.builders import BRAND, PHONE, at, granted, record, sent
from tests.unit.test_packet import NOW, _defined, _life, _stop


def _document(events, campaign=None):
    packet = assemble(record(events), PHONE, BRAND, campaign, NOW)
    return to_document(packet, consistency_token="subscribers:0:9")


def _pdf_text(document) -> str:
    reader = pypdf.PdfReader(io.BytesIO(render(document, Format.PDF)))
    return "\n".join(page.extract_text() for page in reader.pages)


def _thin_grant(name="Zoë Ångström-Дмитриева"):
    thin = ConsentProof(
        registered_at=at(0),
        name=name,
        ip_address="203.0.113.7",
        form_url="https://acme.example/sms",
        consent_text="Yes, text me. Reply STOP to cancel.",
        screenshot_ref="s3://proofs/form.png",
        screenshot_sha256="ab" * 32,
    )
    return dataclasses.replace(granted(at(0)), proof=thin)


def test_the_json_is_the_packet_with_its_version_token_and_tamper_evidence_place():
    events, grant, *_ = _life()
    document = json.loads(render(_document(events), Format.JSON))
    assert document["packet_version"] == 1
    assert document["phone"] == PHONE and document["brand"] == BRAND
    assert document["consistency_token"] == "subscribers:0:9"
    assert document["opt_ins"][0]["event"]["event_id"] == str(grant.event_id)
    assert document["opt_ins"][0]["template"][0] == {
        "key": "name",
        "label": "Name of the end user",
        "value": "Ada Lovelace",
        "note": "",
        "missing": False,
    }
    assert document["messages"][0]["decision"]["allowed"] is True
    assert document["generated_at"] == "2027-04-06T18:00:00Z"
    assert document["tamper_evidence"]["status"] == "not_available"


def test_the_html_draws_each_point_of_the_timeline_in_order():
    events, *_ = _life()
    page = render(_document(events), Format.HTML).decode()
    kinds = re.findall(r'<g class="point (\w+)">', page)
    assert kinds == ["grant", "message", "message", "stop", "confirmation", "resume"]
    assert page.count("<circle") == 6
    # The line is red (opted out) between the STOP and the START, green otherwise.
    assert timeline.STATE_COLOURS["revoked"][0] in page
    assert "Ada Lovelace" in page and "consent_active" in page


def test_the_html_marks_missing_fields_and_escapes_what_people_wrote():
    grant = _thin_grant()
    reply = dataclasses.replace(_stop(at(30)), text="<script>alert(1)</script>")
    page = render(_document([_defined(), grant, reply]), Format.HTML).decode()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Missing: opt_ins[0].email" in page
    assert page.count(">MISSING<") == 3  # email, postal address, first message


def test_the_pdf_shows_the_proof_the_decisions_and_the_timeline():
    grant = _thin_grant()
    stop = _stop(at(60))
    events = [_defined(), grant, sent(at(10)), stop, sent(at(120))]
    text = _pdf_text(_document(events, "promo"))
    assert "Proof of opt-in" in text
    assert PHONE in text
    assert "Zoë Ångström-Дмитриева" in text  # the embedded font keeps any name
    assert "Missing: opt_ins[0].email" in text
    assert "Missing: opt_ins[0].postal_address" in text
    assert "MISSING" in text
    assert "ALLOWED: consent_active" in text
    assert "NOT ALLOWED: revoked" in text
    # The timeline's points: their letters, labels and times are drawn as text.
    assert "opt-in promo" in text and "2026-03-02 19:00" in text
    assert re.search(r"\bG\b", text) and re.search(r"\bS\b", text)


def test_the_pdf_of_a_number_with_no_opt_in_says_so():
    text = _pdf_text(_document([_defined(), sent(at(10))], "promo"))
    assert "No opt-in is recorded." in text
    assert "Missing: opt_ins (no opt-in is recorded for this number and campaign promo)" in text
    assert "NOT ALLOWED: no_consent" in text


def test_a_long_history_merges_runs_of_messages_into_counted_points():
    events = [_defined(), granted(at(0))]
    events += [sent(at(days=i)) for i in range(1, 80)]
    events.append(_stop(at(days=90)))
    drawn = timeline.layout(_document(events)["timeline"])
    assert [m.kind for m in drawn.marks] == ["grant", "message", "stop"]
    assert drawn.marks[1].label == "79 messages"
    assert drawn.marks[2].state_after == "revoked"
    assert drawn.rows == 1


def test_points_wrap_into_rows_and_the_line_keeps_its_colour_across_rows():
    events = [_defined(), granted(at(0))] + [sent(at(i + 1)) for i in range(9)]
    drawn = timeline.layout(_document(events)["timeline"])
    assert drawn.rows == 2
    assert [m.row for m in drawn.marks].count(1) == len(drawn.marks) - timeline.PER_ROW
    # The second row's first stretch is green: consent was active at the row's end.
    second_row = [s for s in drawn.segments if s.y == drawn.marks[-1].y]
    assert second_row[0].colour == timeline.STATE_COLOURS["active"][0]
