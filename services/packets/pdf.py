"""The packet as a PDF for people (``fpdf2``, pure Python): the same sections as the
HTML page, and the timeline drawn with the PDF's own lines and circles from the
layout the SVG uses. DejaVu Sans is embedded, so a name or text shows the same on
every machine; a character it has no glyph for (Chinese, Japanese, Korean) is
written as its code point, ``<U+674E>``, never left out."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fpdf import FPDF
from fpdf.enums import MethodReturnValue, XPos, YPos
from fpdf.fonts import FontFace

from services.packets import timeline

FONT = "DejaVu"
RED = (183, 28, 28)
GREEN = (27, 94, 32)
GREY = (97, 97, 97)
MARGIN = 15.0
CONTENT_WIDTH = 210.0 - 2 * MARGIN
SCALE = CONTENT_WIDTH / timeline.WIDTH
"""Millimetres per unit of the timeline's layout."""


def _t(iso: str) -> str:
    """A packet time, shorter for a table's narrow column: ``2026-03-02 18:05:00``."""
    return iso.replace("T", " ").removesuffix("Z")


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


class _Document(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.footer_text = footer_text
        fonts = files("services.packets") / "fonts"
        self.add_font(FONT, "", str(fonts / "DejaVuSans.ttf"))
        self.add_font(FONT, "B", str(fonts / "DejaVuSans-Bold.ttf"))
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(True, margin=MARGIN)

    def normalize_text(self, text: str) -> str:
        """``text`` with each character the embedded font cannot draw written as its
        code point (``<U+674E>``): DejaVu Sans has no Chinese, Japanese or Korean, and
        such a name was drawn as nothing, a proof of opt-in with its name left blank."""
        font = self.current_font
        if font is not None and hasattr(font, "cmap"):
            cmap = font.cmap
            if not all(ord(c) in cmap or c < " " for c in text):
                text = "".join(
                    c if ord(c) in cmap or c < " " else f"<U+{ord(c):04X}>" for c in text
                )
        return super().normalize_text(text)

    def footer(self) -> None:
        self.set_y(-10)
        self.set_font(FONT, "", 7)
        self.set_text_color(*GREY)
        self.cell(0, 4, f"{self.footer_text} · page {self.page_no()}/{{nb}}", align="C")
        self.set_text_color(0, 0, 0)


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    pdf.set_font(FONT, "B", 12)
    pdf.cell(0, 8, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(189, 189, 189)
    pdf.line(MARGIN, pdf.get_y(), MARGIN + CONTENT_WIDTH, pdf.get_y())
    pdf.ln(2)
    pdf.set_font(FONT, "", 8)


def _para(
    pdf: FPDF, text: str, colour: tuple[int, int, int] | None = None, bold: bool = False
) -> None:
    pdf.set_font(FONT, "B" if bold else "", 8)
    if colour:
        pdf.set_text_color(*colour)
    pdf.multi_cell(0, 4.2, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(FONT, "", 8)


ROW_LINES = 50
"""Lines of text a table row holds at most (190 mm, of a page's 267): fpdf2 breaks a
table between rows only, and refuses a row taller than a page."""


def _table(pdf: FPDF, widths: tuple[float, ...], rows: list[list[Any]]) -> None:
    """Rows of cells: a string, or (string, FontFace) for a cell of its own style."""
    pdf.set_font(FONT, "", 7.5)
    with pdf.table(
        col_widths=widths,
        text_align="LEFT",
        line_height=3.8,
        padding=1,
        headings_style=FontFace(emphasis="BOLD", fill_color=(245, 245, 245)),
    ) as table:
        for i, values in enumerate(rows):
            # The headings are one row, repeated on each page; only a body row is split.
            for part in [values] if i == 0 else _rows_that_fit(pdf, widths, values):
                row = table.row()
                for value in part:
                    if isinstance(value, tuple):
                        row.cell(value[0], style=value[1])
                    else:
                        row.cell(str(value))
    pdf.set_font(FONT, "", 8)


def _rows_that_fit(pdf: FPDF, widths: tuple[float, ...], values: list[Any]) -> list[list[Any]]:
    """``values`` as one row, or, when a cell runs over ``ROW_LINES`` lines (a consent
    text of 8,192 characters, an opt-out's words of 16,384), as rows of at most that
    many lines each, the rest of each long cell going on in the rows below it: a row
    taller than a page made the whole PDF fail. Measured a little narrower than the
    cell, and in bold, so that each line still fits the cell on its own."""
    pdf.set_font(FONT, "B", 7.5)
    parts: list[list[Any]] = []
    for width, value in zip(widths, values, strict=True):
        text, style = value if isinstance(value, tuple) else (str(value), None)
        lines = pdf.multi_cell(width - 4, 3.8, text, dry_run=True, output=MethodReturnValue.LINES)
        assert isinstance(lines, list)
        if len(lines) <= ROW_LINES:
            parts.append([value])
            continue
        pieces = ["\n".join(lines[i : i + ROW_LINES]) for i in range(0, len(lines), ROW_LINES)]
        parts.append([(p, style) if style is not None else p for p in pieces])
    pdf.set_font(FONT, "", 7.5)
    if all(len(p) == 1 for p in parts):
        return [values]
    return [[p[i] if i < len(p) else "" for p in parts] for i in range(max(len(p) for p in parts))]


MISSING = FontFace(emphasis="BOLD", color=RED)
DENIED = FontFace(emphasis="BOLD", color=RED)


def _timeline(pdf: FPDF, points: list[dict[str, Any]]) -> None:
    t = timeline.layout(points)
    height = t.height * SCALE
    if pdf.get_y() + height + 12 > pdf.h - MARGIN:
        pdf.add_page()
    top = pdf.get_y()

    def at(x: float, y: float) -> tuple[float, float]:
        return MARGIN + x * SCALE, top + y * SCALE

    if not t.marks:
        _para(pdf, "No facts recorded for this number and brand.")
        return
    pdf.set_line_width(6 * SCALE)
    for s in t.segments:
        pdf.set_draw_color(*_rgb(s.colour))
        x1, y = at(s.x1, s.y)
        x2, _ = at(s.x2, s.y)
        pdf.line(x1, y, x2, y)
    pdf.set_line_width(0.2)
    for m in t.marks:
        cx, cy = at(m.x, m.y)
        pdf.set_fill_color(*_rgb(m.colour))
        pdf.set_draw_color(255, 255, 255)
        pdf.circle(cx, cy, 12 * SCALE, style="FD")
        pdf.set_font(FONT, "B", 7)
        pdf.set_text_color(255, 255, 255)
        pdf.text(cx - pdf.get_string_width(m.letter) / 2, cy + 0.9, m.letter)
        pdf.set_text_color(0, 0, 0)
        pdf.set_font(FONT, "", 6.5)
        label = m.label if len(m.label) <= 18 else m.label[:17] + "…"
        pdf.text(cx - pdf.get_string_width(label) / 2, cy - 20 * SCALE, label)
        pdf.set_text_color(*GREY)
        pdf.set_font(FONT, "", 5.5)
        pdf.text(cx - pdf.get_string_width(m.when) / 2, cy + 30 * SCALE, m.when)
        pdf.set_text_color(0, 0, 0)
    pdf.set_fill_color(255, 255, 255)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_y(top + height)
    legend = " · ".join(f"{letter} {meaning}" for letter, _, meaning in t.legend)
    states = " · ".join(meaning for _, meaning in t.states)
    _para(
        pdf,
        f"{legend}. Line colour: {states} (grey, green, red, amber). "
        "Times in UTC; points in order, evenly spaced.",
        GREY,
    )


def render_pdf(p: dict[str, Any]) -> bytes:
    """The PDF of a packet document (``services.packets.document.to_document``)."""
    subject = f"{p['phone']} / {p['brand']}" + (f" / {p['campaign']}" if p["campaign"] else "")
    pdf = _Document(f"Proof of opt-in: {subject}")
    pdf.set_title(f"Proof of opt-in: {subject}")
    pdf.set_creator("consent-ledger")
    pdf.add_page()
    pdf.set_font(FONT, "B", 18)
    pdf.cell(0, 10, "Proof of opt-in", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, "", 9)
    for label, value in (
        ("Phone number", p["phone"]),
        ("Brand", p["brand"]),
        ("Campaign", p["campaign"] or "every campaign of the brand"),
        ("Generated at", p["generated_at"]),
        ("Ledger read up to", p["consistency_token"] or "-"),
    ):
        pdf.set_font(FONT, "B", 9)
        pdf.cell(38, 5, label)
        pdf.set_font(FONT, "", 9)
        pdf.cell(0, 5, str(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    _heading(pdf, "What the provider's template asks for and the record lacks")
    if p["missing"]:
        for m in p["missing"]:
            _para(pdf, f"Missing: {m['field']} ({m['why']})", RED)
    else:
        _para(pdf, "Nothing: every field the template asks for is recorded.")

    _heading(pdf, "Consent timeline")
    _timeline(pdf, p["timeline"])

    _heading(pdf, "Opt-ins and their proof")
    if not p["opt_ins"]:
        _para(pdf, "No opt-in is recorded.", RED, bold=True)
    for o in p["opt_ins"]:
        e = o["event"]
        _para(pdf, f"Opt-in to {o['campaign']} at {e['occurred_at']}", bold=True)
        _para(
            pdf,
            f"Event {e['event_id']}, recorded {e['recorded_at']} by {e['recorded_by'] or '-'}; "
            f"tier {o['tier']}, method {o['method']}, list source {o['source']}.",
            GREY,
        )
        rows: list[list[Any]] = [["The template asks for", "Recorded"]]
        for item in o["template"]:
            shown: Any = ("MISSING", MISSING) if item["missing"] else item["value"]
            if item["note"]:
                text = "MISSING" if item["missing"] else item["value"]
                shown = (
                    (f"{text}\n({item['note']})", MISSING)
                    if item["missing"]
                    else f"{text}\n({item['note']})"
                )
            rows.append([item["label"], shown])
        _table(pdf, (55, CONTENT_WIDTH - 55), rows)

    _heading(pdf, "Messages sent, and the decision that allowed each")
    if not p["messages"]:
        _para(pdf, "No message was sent.")
    else:
        rows = [
            ["Sent (UTC)", "Message", "Campaign, kind", "Opt-out words / sender", "Decision then"]
        ]
        for m in p["messages"]:
            d = m["decision"]
            verdict = "ALLOWED" if d["allowed"] else "NOT ALLOWED"
            text = f"{verdict}: {d['reason']}" + (f" ({d['detail']})" if d["detail"] else "")
            if d["obligations"]:
                text += f"\nobligations: {', '.join(d['obligations'])}"
            if m["unmet_obligations"]:
                text += f"\nnot met: {', '.join(m['unmet_obligations'])}"
            if m["hindsight"]:
                h = m["hindsight"]
                text += (
                    f"\nIn hindsight: {'allowed' if h['allowed'] else 'not allowed'}, {h['reason']}"
                )
            bad = not d["allowed"] or m["unmet_obligations"] or m["hindsight"]
            rows.append(
                [
                    _t(m["event"]["occurred_at"]),
                    m["message_id"],
                    f"{m['campaign']}, {m['kind']}",
                    f"{'yes' if m['included_opt_out_language'] else 'no'} / "
                    f"{'yes' if m['identified_sender'] else 'no'}",
                    (text, DENIED) if bad else text,
                ]
            )
        _table(pdf, (30, 28, 32, 22, CONTENT_WIDTH - 112), rows)

    _heading(pdf, "Opt-outs and how they were handled")
    if not p["opt_outs"]:
        _para(pdf, "No opt-out is recorded.")
    else:
        rows = [["When (UTC)", "What", "Scope", "Words", "Handling"]]
        for o in p["opt_outs"]:
            rows.append(
                [
                    _t(o["event"]["occurred_at"]),
                    f"{o['kind']} ({o['channel']})",
                    o["scope"],
                    o["text"],
                    o["handling"],
                ]
            )
        _table(pdf, (30, 25, 30, 30, CONTENT_WIDTH - 115), rows)

    _heading(pdf, "Texts received and how they were handled")
    if not p["replies"]:
        _para(pdf, "No text was received.")
    else:
        rows = [["When (UTC)", "Text", "To", "Handling"]]
        for r in p["replies"]:
            rows.append([_t(r["event"]["occurred_at"]), r["body"], r["to_number"], r["handling"]])
        _table(pdf, (30, 40, 25, CONTENT_WIDTH - 95), rows)

    if p["other"]:
        _heading(pdf, "Other facts")
        rows = [["When (UTC)", "Fact", "Event"]]
        rows += [[_t(e["occurred_at"]), e["summary"], e["event_id"]] for e in p["other"]]
        _table(pdf, (30, 80, CONTENT_WIDTH - 110), rows)

    _heading(pdf, "Every fact, as the ledger recorded it")
    rows = [["Position", "Type", "Occurred (UTC)", "Recorded (UTC)", "By", "Event id"]]
    for e in p["events"]:
        rows.append(
            [
                f"{e['partition']}/{e['offset']}",
                e["type"],
                _t(e["occurred_at"]),
                _t(e["recorded_at"]),
                e["recorded_by"] or "-",
                e["event_id"],
            ]
        )
    _table(pdf, (16, 30, 30, 30, 20, CONTENT_WIDTH - 126), rows)

    _heading(pdf, "Tamper evidence")
    evidence = p["tamper_evidence"]
    _para(pdf, f"{evidence['status']}: {evidence.get('detail', '')}")
    _para(
        pdf,
        f"Made by consent-ledger, packet format {p['packet_version']}. "
        "The JSON form of this packet holds the same facts for machines.",
        GREY,
    )
    return bytes(pdf.output())
