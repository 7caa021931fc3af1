"""The proof-of-opt-in packet rendered: JSON for machines, an HTML page and a PDF for
people. Each is drawn from the packet's JSON document (``document.to_document``), so
the three show the same facts."""

from __future__ import annotations

import enum
from functools import cache
from typing import Any

import jinja2

from services.packets import timeline
from services.packets.document import to_document, to_json

__all__ = ["Format", "render", "render_html", "to_document", "to_json"]


class Format(enum.Enum):
    JSON = "json"
    HTML = "html"
    PDF = "pdf"

    @property
    def content_type(self) -> str:
        return {
            Format.JSON: "application/json",
            Format.HTML: "text/html; charset=utf-8",
            Format.PDF: "application/pdf",
        }[self]


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("services.packets", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_html(document: dict[str, Any]) -> bytes:
    page = _templates().get_template("packet.html.j2")
    return page.render(
        p=document, t=timeline.layout(document["timeline"]), width=timeline.WIDTH
    ).encode()


def render(document: dict[str, Any], fmt: Format) -> bytes:
    if fmt is Format.JSON:
        return to_json(document)
    if fmt is Format.HTML:
        return render_html(document)
    from services.packets.pdf import render_pdf  # fpdf2 loads only when a PDF is asked for

    return render_pdf(document)
