"""A ``ledger.digest.Digest`` as bytes, for the projection's ``subscriber_state.digest``.

MessagePack, behind one version byte. The digest is nested named tuples of ints,
strings and booleans, which MessagePack carries as arrays; reading one back types
each array as the named tuple it was. It is a cache of the snapshot
beside it, never the source of anything, so a row whose digest is missing, or
written in a format this code does not know, is answered from the snapshot
instead (``decode_digest`` returns None).
"""

from __future__ import annotations

from typing import Any

import msgpack

from ledger.digest import Age, CampaignDigest, Digest, Located, Mark, Pending, built

FORMAT = 24
"""1 had no ``CampaignDigest.last_disclosed_at``, 2 no ``Digest.regions`` and
``Digest.located`` (the recipient's candidate states), 3 no ``CampaignDigest``
``help_request``, ``help_reply`` or ``opt_in_confirmation``, 4 no
``CampaignDigest.proof_missing``, 5 no due time or unattributed mark on
``Digest.pending``, 6 no ``Digest.erased``, 7 no imported mark on
``Digest.pending``, 8 no refused mark on it, 9 no reused-id mark on it, 10 left out
of ``CampaignDigest.sent`` a second reply to one HELP or START recorded as exempt
(``ledger.state._owed_reply``), 11 no ``CampaignDigest.last_inbound`` (each
campaign's own conversation), 12 a second opt-out confirmation of one opt-out
(``ledger.state._owed_confirmation``), 13 no ``revocation_said``, ``grant_stated``
or ``resume_stated`` on ``CampaignDigest``, nor ``brand_revocation_said`` or
``brand_resume_stated`` on ``Digest`` (facts stamped ahead ordered by place alone),
14 no provider mark on ``Digest.pending``, 15 read a proof field holding a
placeholder ("N/A", "-") or, typed, a value that does not parse as given in
``CampaignDigest.proof_missing``, 16 no ``Digest.brand_revocation_asked`` (an
opt-out a review recorded confirmed from the review, not from the person's text),
17 read a promotional grant given verbally or imported as promotional in
``CampaignDigest.tier`` (``ledger.digest.reached_tier``), 18 held the latest send
where ``CampaignDigest.first_sent_at`` is (a late first message that did not
reconfirm read as meeting the reconfirmation), and in ``last_disclosed_at`` a send
recorded before the latest consent but stamped after it, 19 no imported mark on
``CampaignDigest.revocation`` or ``Digest.brand_revocation`` (an imported opt-out
read as owing its confirmation here), 20 no ``CampaignDigest.answered_late`` (a
help reply or opt-out confirmation recorded before its text counted), 21 no reply
that escaped the caps in ``CampaignDigest.sent`` and ``answered_late``, nor
``conversed`` (one sent outside the window a change of the rules dated back gave it
counted for nothing, ``ledger.state.CampaignConsent.escaped``), 22 held a reply
that counted as the first message or the send that carried the opt-out language
(``ledger.state.COUNTED_KINDS``), and had no ``CampaignDigest.ended_elsewhere`` (a
reply whose exchange another campaign's opt-out ended under the revoke-all rule
escaped the caps), 23 let a reply escape the caps when the latest opt-out or opt-in
recorded before it, placed after what earned it, could hide one inside its exchange,
or a hold dismissed before it was recorded stood there
(``ledger.state._shut_already``): rows in any of them are read from their snapshots,
which are folded and digested again (a snapshot written before 14 may lack an
opt-out latest by the time it said, and one before 24 the fact that counted a reply
once a later one replaced it: ``consent-ledger rebuild`` folds them from the
ledger).
"""
_HEADER = bytes([FORMAT])


class _Unreadable(ValueError):
    """A field too many or too few somewhere: a row of another shape."""


_PACKER = msgpack.Packer(use_bin_type=True)
"""Made once: ``msgpack.packb`` makes a packer per call, some 40 % of an encoding,
and the projection encodes a digest for every state it writes. Shared safely: a
pack of these plain tuples runs in C start to end, holding the GIL, and the
packer empties itself after each, even one that fails."""


def encode_digest(digest: Digest) -> bytes:
    # The named tuples pack as the plain tuples they are, field by field.
    packed: bytes = _PACKER.pack(digest)
    return _HEADER + packed


def decode_digest(data: bytes | None) -> Digest | None:
    """The digest in ``data``; None when there is none, or in another format."""
    if not data or data[0] != FORMAT:
        return None
    return decode_payload(data[1:])


def payload_of(data: bytes) -> bytes:
    """What follows the version byte of an encoded digest in this ``FORMAT``: a holder
    of many (the replica) keeps that, and skips a copy per read."""
    if not data or data[0] != FORMAT:
        raise ValueError("not a digest in this format")
    return data[1:]


def untyped_payload(data: bytes) -> tuple[Any, ...]:
    """What follows the version byte, as MessagePack reads it: the digest's fields in
    plain tuples, unchecked (``decode_payload`` types and checks them)."""
    raw: tuple[Any, ...] = msgpack.unpackb(data, use_list=False)
    return raw


def decode_payload(data: bytes) -> Digest | None:
    """``decode_digest`` of what follows the version byte."""
    try:
        return _digest(msgpack.unpackb(data, use_list=False))
    except _Unreadable:
        return None


def _digest(raw: tuple[Any, ...]) -> Digest:
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
    ) = _fields(Digest, raw)
    return built(
        Digest,
        (
            brand,
            zones,
            pending and tuple([built(Pending, p) for p in pending]),
            brand_revocation and built(Mark, brand_revocation),
            brand_resume and built(Mark, brand_resume),
            age and built(Age, _fields(Age, age)),
            last_inbound and built(Mark, last_inbound),
            confirmations and tuple([built(Mark, m) for m in confirmations]),
            {name: _campaign(fields) for name, fields in campaigns.items()},
            regions,
            located and built(Located, located),
            erased and built(Mark, erased),
            brand_revocation_said and built(Mark, brand_revocation_said),
            brand_resume_stated,
            brand_revocation_asked,
            brand_revocation_imported,
        ),
    )


def _campaign(raw: tuple[Any, ...]) -> CampaignDigest:
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
    ) = _fields(CampaignDigest, raw)
    return built(
        CampaignDigest,
        (
            grant and built(Mark, grant),
            tier,
            revocation and built(Mark, revocation),
            resume and built(Mark, resume),
            reconfirmation and built(Mark, reconfirmation),
            sent and tuple([built(Mark, m) for m in sent]),
            first_sent_at,
            last_disclosed_at,
            help_request and built(Mark, help_request),
            help_reply and built(Mark, help_reply),
            opt_in_confirmation and built(Mark, opt_in_confirmation),
            proof_missing,
            last_inbound and built(Mark, last_inbound),
            revocation_said and built(Mark, revocation_said),
            grant_stated,
            resume_stated,
            revocation_imported,
            answered_late and tuple([built(Mark, m) for m in answered_late]),
            conversed and tuple([built(Mark, m) for m in conversed]),
            ended_elsewhere and tuple([built(Mark, m) for m in ended_elsewhere]),
        ),
    )


def _fields(cls: type[tuple[Any, ...]], raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """``raw``, when it holds exactly the fields of the named tuple ``cls``."""
    if len(raw) != len(cls._fields):  # type: ignore[attr-defined]
        raise _Unreadable(cls.__name__)
    return raw
