"""A ``ledger.digest.Digest`` in a few dozen bytes, for the replica's memory.

Most of a digest repeats from one number to the next: the brand, an area code's
time zones and regions, the campaign names, tiers, what a proof lacks, which facts
are there at all. Only the times, offsets and event ids differ. ``Shapes`` keeps
each distinct structure once, as a *shape*: its constants, a ``struct`` format for
the values that differ, and a function (generated once per shape) that builds the
named tuples from them. A digest is stored as its shape's number and its packed
values, then each campaign the same way:

    digest shape (2 bytes) | digest values | per campaign: shape (2 bytes) | values

A grant alone (one campaign) is 2 + 2 + 8 (its time) + 4 (its offset) + 16 (its
event id, a UUID) = 32 bytes, where its MessagePack is some 150.

Encoding is exact or refused: ``encode`` raises ``Unencodable`` for anything it
cannot give back equal and of the same types (an int beyond 64 bits, a float where
an int was, too many shapes), and the caller keeps that digest another way.
Strings that are neither a UUID nor part of a shape (a reply's text, a date of
birth, an event id in another form) are kept once each in a table of strings that
lives as long as the ``Shapes``. Neither shapes nor strings are ever dropped from
a ``Shapes``: the replica rebuilds its copy with a fresh one when enough of them,
and of its arena, may be dead (``CompactDigests.wants_compaction``); ``nbytes``
estimates what they hold.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

from ledger.digest import Age, CampaignDigest, Digest, Located, Mark, Pending, built

_INT64 = (-(2**63), 2**63 - 1)
_SHAPE = struct.Struct("<H")
MAX_SHAPES = 2**16 - 1
"""Shape numbers are two bytes: past that many of either kind, ``encode`` refuses."""
SHAPE_BYTES = 3_200
"""About what one shape holds (its struct, generated function, constants and
signature): measured with ``tracemalloc`` over 2,000 campaign shapes."""
_STRING_ENTRY = 48
"""What a kept string costs beside its own object: its list slot and dict entry."""


class Unencodable(ValueError):
    """A digest this encoding cannot give back exactly."""


class Unreadable(ValueError):
    """Bytes that are no digest of this ``Shapes`` (a bug, or memory gone wrong)."""


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _id_code(value: Any, vals: list[Any]) -> str:
    """``u`` for an event id that is a UUID in its usual form (kept as 16 bytes),
    ``s`` for any other string (kept in the table of strings, by the caller)."""
    if type(value) is not str:
        raise Unencodable(f"{type(value).__name__} where an event id belongs")
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        digits = value.replace("-", "")
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raw = b""
        if raw.hex() == digits:  # 32 lowercase hex digits: no case or spaces to lose
            vals.append(raw)
            return "u"
    vals.append(value)
    return "s"


def _int(value: Any) -> int:
    if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
        raise Unencodable(f"{value!r} is no 64-bit int")
    return value


def _exact(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise Unencodable(f"{type(value).__name__} where a {kind.__name__} belongs")
    return value


def _strs(value: Any) -> tuple[str, ...]:
    if type(value) is not tuple:
        raise Unencodable("not a tuple of strings")
    for item in value:
        if type(item) is not str:
            raise Unencodable("not a tuple of strings")
    return value


def _fields(value: Any, cls: type[tuple[Any, ...]], size: int, what: str) -> tuple[Any, ...]:
    """``value`` as a tuple of ``cls``'s fields: an instance of ``cls`` or a plain tuple
    of as many items (MessagePack's form of one, read untyped), which decodes to
    the instance of ``cls`` it stands for."""
    if (type(value) is cls or type(value) is tuple) and len(value) == size:
        return value
    raise Unencodable(f"not a {what}")


def _mark(m: Any, vals: list[Any]) -> tuple[str, str] | None:
    """A mark's part of a shape's signature: None, or its offset's and id's codes;
    its values are appended to ``vals``."""
    if m is None:
        return None
    at, offset, event_id = _fields(m, Mark, 3, "Mark")
    vals.append(_int(at))
    vals.append(_int(offset))
    return ("I" if 0 <= offset < 2**32 else "q", _id_code(event_id, vals))


def _marks(ms: Any, vals: list[Any]) -> tuple[Any, ...]:
    if type(ms) is not tuple or None in ms:
        raise Unencodable("marks are not a tuple of marks")
    return tuple([_mark(m, vals) for m in ms])


def _optional_int(value: Any, vals: list[Any]) -> bool:
    if value is None:
        return False
    vals.append(_int(value))
    return True


def _digest_signature(d: Any, vals: list[Any]) -> tuple[Any, ...]:
    """What a digest's shape is made of (its constants and the codes of its values,
    in order), its values appended to ``vals``. Types are checked as they are met,
    so a signature holds only values of the types the shape will give back."""
    (
        brand,
        zones,
        pending,
        brand_revocation,
        brand_resume,
        age,
        last_inbound,
        confirmations,
        campaigns,
        regions,
        located,
        erased,
        brand_revocation_said,
        brand_resume_stated,
        brand_revocation_asked,
        brand_revocation_imported,
    ) = _fields(d, Digest, 16, "Digest")
    if type(pending) is not tuple:
        raise Unencodable("pending is not a tuple")
    pending_sig = []
    for p in pending:
        event_id, text, due, unattributed, imported, refused, reused_id, provider = _fields(
            p, Pending, 8, "Pending"
        )
        code = _id_code(event_id, vals)
        vals.append(_exact(text, str))
        vals.append(_int(due))
        flags = (
            _exact(unattributed, bool),
            _exact(imported, bool),
            _exact(refused, bool),
            _exact(reused_id, bool),
            _exact(provider, bool),
        )
        pending_sig.append((code, *flags))
    revocation = _mark(brand_revocation, vals)
    # Present only for facts stamped ahead: a digest without one packs no more.
    revocation_said = _mark(brand_revocation_said, vals)
    resume = _mark(brand_resume, vals)
    resume_stated = _optional_int(brand_resume_stated, vals)
    age_sig: tuple[str, bool] | None = None
    if age is not None:
        event_id, verified, born = _fields(age, Age, 3, "Age")
        age_sig = (_id_code(event_id, vals), _exact(verified, bool))
        vals.append(_exact(born, str))
    inbound = _mark(last_inbound, vals)
    confirmations_sig = _marks(confirmations, vals)
    located_sig: tuple[str, str] | None = None
    if located is not None:
        state, event_id = _fields(located, Located, 2, "Located")
        located_sig = (_exact(state, str), _id_code(event_id, vals))
    erased_sig = _mark(erased, vals)
    asked = _optional_int(brand_revocation_asked, vals)
    if type(campaigns) is not dict:
        raise Unencodable("campaigns is not a dict")
    return (
        len(campaigns),
        _exact(brand, str),
        _strs(zones),
        tuple(pending_sig),
        revocation,
        revocation_said,
        resume,
        resume_stated,
        age_sig,
        inbound,
        confirmations_sig,
        _strs(regions),
        located_sig,
        erased_sig,
        asked,
        _exact(brand_revocation_imported, bool),
    )


def _campaign_signature(name: Any, c: Any, vals: list[Any]) -> tuple[Any, ...]:
    (
        grant,
        tier,
        revocation,
        resume,
        reconfirmation,
        sent,
        first_sent_at,
        last_disclosed_at,
        help_request,
        help_reply,
        opt_in_confirmation,
        proof_missing,
        last_inbound,
        revocation_said,
        grant_stated,
        resume_stated,
        revocation_imported,
        answered_late,
        conversed,
        ended_elsewhere,
    ) = _fields(c, CampaignDigest, 20, "CampaignDigest")
    return (
        _exact(name, str),
        _mark(grant, vals),
        _optional_int(grant_stated, vals),
        _int(_exact(tier, int)),
        _mark(revocation, vals),
        _mark(revocation_said, vals),
        _mark(resume, vals),
        _optional_int(resume_stated, vals),
        _mark(reconfirmation, vals),
        _marks(sent, vals),
        _optional_int(first_sent_at, vals),
        _optional_int(last_disclosed_at, vals),
        _mark(help_request, vals),
        _mark(help_reply, vals),
        _mark(opt_in_confirmation, vals),
        _strs(proof_missing),
        _mark(last_inbound, vals),
        _exact(revocation_imported, bool),
        _marks(answered_late, vals),
        _marks(conversed, vals),
        _marks(ended_elsewhere, vals),
    )


class _Source:
    """The generated code of one shape, written from its signature: the struct's
    format, and the expression that builds the named tuples from the values ``v``."""

    def __init__(self, strings: list[str]) -> None:
        self.format: list[str] = []
        self.consts: dict[str, Any] = {"built": built, "_u": _uuid_text, "STR": strings}
        self.strings: list[int] = []
        """Which values are strings kept in the table (their index is packed)."""

    def value(self, code: str) -> str:
        self.format.append(code)
        return f"v[{len(self.format) - 1}]"

    def const(self, value: Any) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = value
        return name

    def string(self) -> str:
        self.strings.append(len(self.format))
        return f"STR[{self.value('I')}]"

    def event_id(self, code: str) -> str:
        return f"_u({self.value('16s')})" if code == "u" else self.string()

    def mark(self, sig: tuple[str, str] | None) -> str:
        if sig is None:
            return "None"
        offset_code, id_code = sig
        at = self.value("q")
        offset = self.value(offset_code)
        return f"built(Mark, ({at}, {offset}, {self.event_id(id_code)}))"

    def marks(self, sigs: tuple[Any, ...]) -> str:
        return "(" + "".join(f"{self.mark(s)}, " for s in sigs) + ")"

    def optional_int(self, present: bool) -> str:
        return self.value("q") if present else "None"

    def digest(self, sig: tuple[Any, ...]) -> str:
        (
            _,
            brand,
            zones,
            pending,
            revocation,
            revocation_said,
            resume,
            resume_stated,
            age,
            inbound,
            confs,
            regions,
            located,
            erased,
            asked,
            revocation_imported,
        ) = sig
        items = []
        for id_code, unattributed, imported, refused, reused_id, provider in pending:
            event_id = self.event_id(id_code)
            text = self.string()
            due = self.value("q")
            flags = f"{unattributed!r}, {imported!r}, {refused!r}, {reused_id!r}, {provider!r}"
            items.append(f"built(Pending, ({event_id}, {text}, {due}, {flags})), ")
        revocation_expr = self.mark(revocation)
        said_expr = self.mark(revocation_said)
        resume_expr = self.mark(resume)
        resume_stated_expr = self.optional_int(resume_stated)
        age_expr = "None"
        if age is not None:
            event_id = self.event_id(age[0])
            age_expr = f"built(Age, ({event_id}, {age[1]!r}, {self.string()}))"
        inbound_expr = self.mark(inbound)
        confs_expr = self.marks(confs)
        located_expr = "None"
        if located is not None:
            state = self.const(located[0])
            located_expr = f"built(Located, ({state}, {self.event_id(located[1])}))"
        erased_expr = self.mark(erased)
        asked_expr = self.optional_int(asked)
        return (
            f"built(Digest, ({self.const(brand)}, {self.const(zones)}, ({''.join(items)}), "
            f"{revocation_expr}, {resume_expr}, {age_expr}, {inbound_expr}, {confs_expr}, "
            f"campaigns, {self.const(regions)}, {located_expr}, {erased_expr}, "
            f"{said_expr}, {resume_stated_expr}, {asked_expr}, {revocation_imported!r}))"
        )

    def campaign(self, sig: tuple[Any, ...]) -> str:
        # In the order ``_campaign_signature`` appended the values: each stated time
        # follows its mark there (sig[2], sig[5], sig[7]), and ends the tuple here.
        grant = self.mark(sig[1])
        grant_stated = self.optional_int(sig[2])
        revocation = self.mark(sig[4])
        said = self.mark(sig[5])
        resume = self.mark(sig[6])
        resume_stated = self.optional_int(sig[7])
        fields = (
            grant,
            repr(sig[3]),
            revocation,
            resume,
            self.mark(sig[8]),
            self.marks(sig[9]),
            self.optional_int(sig[10]),
            self.optional_int(sig[11]),
            self.mark(sig[12]),
            self.mark(sig[13]),
            self.mark(sig[14]),
            self.const(sig[15]),
            self.mark(sig[16]),
            said,
            grant_stated,
            resume_stated,
            repr(sig[17]),
            self.marks(sig[18]),
            self.marks(sig[19]),
            self.marks(sig[20]),
        )
        return f"built(CampaignDigest, ({', '.join(fields)}))"


class _Shape:
    __slots__ = ("campaigns", "decode", "layout", "strings")

    def __init__(
        self, layout: struct.Struct, decode: Callable[..., Any], strings: list[int], campaigns: int
    ) -> None:
        self.layout = layout
        self.decode = decode
        self.strings = strings
        self.campaigns = campaigns


class Shapes:
    """The shapes seen so far, and the encoder and decoder of digests in them.

    One ``Shapes`` per copy of the digests: a digest encoded by one is read by the
    same one (``decode``), since shape numbers mean nothing elsewhere."""

    def __init__(self) -> None:
        self._strings: list[str] = []
        self._string_ids: dict[str, int] = {}
        self._digest_ids: dict[tuple[Any, ...], int] = {}
        self._campaign_ids: dict[tuple[Any, ...], int] = {}
        self._digests: list[_Shape] = []
        self._campaigns: list[_Shape] = []
        self._campaign_decoders: list[Callable[..., Any]] = []
        self._string_bytes = 0

    @property
    def nbytes(self) -> int:
        """About how many bytes the shapes and the kept strings hold (an estimate:
        ``SHAPE_BYTES`` a shape)."""
        return self._string_bytes + (len(self._digests) + len(self._campaigns)) * SHAPE_BYTES

    @property
    def counts(self) -> tuple[int, int, int]:
        """How many digest shapes, campaign shapes and kept strings there are."""
        return len(self._digests), len(self._campaigns), len(self._strings)

    def encode(self, digest: Digest | tuple[Any, ...]) -> bytes:
        """``digest`` as bytes that ``decode`` gives back equal, or ``Unencodable``.

        ``digest`` may also be a digest as MessagePack reads it untyped (plain tuples
        for the named ones): the bytes then decode to the ``Digest`` it stands for,
        and a load skips building the named tuples twice."""
        vals: list[Any] = []
        sig = _digest_signature(digest, vals)
        parts = [self._packed(sig, vals, self._digest_ids, self._digests)]
        for name, campaign in digest[8].items():
            vals = []
            sig = _campaign_signature(name, campaign, vals)
            parts.append(self._packed(sig, vals, self._campaign_ids, self._campaigns))
        return b"".join(parts)

    def _packed(
        self,
        sig: tuple[Any, ...],
        vals: list[Any],
        ids: dict[tuple[Any, ...], int],
        shapes: list[_Shape],
    ) -> bytes:
        number = ids.get(sig)
        if number is None:
            if len(shapes) >= MAX_SHAPES:
                raise Unencodable("too many shapes")
            shapes.append(self._compiled(sig, shapes is self._digests))
            number = ids[sig] = len(shapes) - 1
        shape = shapes[number]
        for i in shape.strings:
            vals[i] = self._string_id(vals[i])
        try:
            return _SHAPE.pack(number) + shape.layout.pack(*vals)
        except struct.error as exc:  # a value the signature did not foresee
            raise Unencodable(str(exc)) from exc

    def _string_id(self, text: str) -> int:
        index = self._string_ids.get(text)
        if index is None:
            index = self._string_ids[text] = len(self._strings)
            self._strings.append(text)
            self._string_bytes += sys.getsizeof(text) + _STRING_ENTRY
        return index

    def _compiled(self, sig: tuple[Any, ...], is_digest: bool) -> _Shape:
        source = _Source(self._strings)
        if is_digest:
            expr = source.digest(sig)
            layout = struct.Struct("<" + "".join(source.format))
            decode = _compile_digest(source, expr, sig[0], layout)
            return _Shape(layout, decode, source.strings, sig[0])
        expr = source.campaign(sig)
        layout = struct.Struct("<" + "".join(source.format))
        decode = _compile_campaign(source, sig[0], expr, layout)
        self._campaign_decoders.append(decode)
        return _Shape(layout, decode, source.strings, 0)

    def decode(self, data: bytes | bytearray, at: int = 0) -> Digest:
        """The digest encoded at ``at`` in ``data``; ``Unreadable`` if there is none."""
        try:
            shape = self._digests[data[at] | data[at + 1] << 8]
            digest: Digest = shape.decode(data, at + 2, self._campaign_decoders)
            return digest
        except (IndexError, struct.error) as exc:
            raise Unreadable(f"no digest at {at}: {exc}") from exc

    def size_at(self, data: bytes | bytearray, at: int) -> int:
        """How many bytes the digest encoded at ``at`` takes."""
        try:
            shape = self._digests[data[at] | data[at + 1] << 8]
            end = at + 2 + shape.layout.size
            for _ in range(shape.campaigns):
                end += 2 + self._campaigns[data[end] | data[end + 1] << 8].layout.size
            return end - at
        except IndexError as exc:
            raise Unreadable(f"no digest at {at}: {exc}") from exc


_NAMES = {
    "Mark": Mark,
    "Pending": Pending,
    "Age": Age,
    "Located": Located,
    "Digest": Digest,
    "CampaignDigest": CampaignDigest,
}


def _compile(source: str, plan: _Source, layout: struct.Struct, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {**_NAMES, **plan.consts, "S": layout.unpack_from}
    exec(compile(source, f"<digest shape {name}>", "exec"), namespace)
    fn: Callable[..., Any] = namespace["decode"]
    return fn


def _compile_digest(
    plan: _Source, expr: str, n_campaigns: int, layout: struct.Struct
) -> Callable[..., Any]:
    """``decode(data, at, campaign_shapes)``: the digest whose values start at ``at``
    (after its shape number), its campaigns following them. Built from the shape's
    own expressions, so that decoding runs no interpreter of shapes."""
    lines = ["def decode(data, at, shapes):"]
    lines.append("    v = S(data, at)" if plan.format else "    v = ()")
    lines.append(f"    at += {layout.size}")
    lines.append("    campaigns = {}")
    for _ in range(n_campaigns):
        lines.append("    name, campaign, at = shapes[data[at] | data[at + 1] << 8](data, at + 2)")
        lines.append("    campaigns[name] = campaign")
    lines.append(f"    return {expr}")
    return _compile("\n".join(lines), plan, layout, "digest")


def _compile_campaign(
    plan: _Source, name: str, expr: str, layout: struct.Struct
) -> Callable[..., Any]:
    """``decode(data, at)``: (name, campaign digest, where the next one starts)."""
    plan.consts["NAME"] = name
    lines = ["def decode(data, at):"]
    lines.append("    v = S(data, at)" if plan.format else "    v = ()")
    lines.append(f"    return NAME, {expr}, at + {layout.size}")
    return _compile("\n".join(lines), plan, layout, f"campaign {name!r}")
