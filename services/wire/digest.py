"""A ``ledger.digest.Digest`` as bytes, for the projection's ``subscriber_state.digest``.

MessagePack, behind one version byte. The digest is nested tuples of ints,
strings and booleans, which MessagePack carries as they are: its C decoder reads
one back in about a microsecond, two with the named tuples rebuilt, and that is
part of the per-number cost of a batch check. It is a cache of the snapshot
beside it, never the source of anything, so a row whose digest is missing, or
written in a format this code does not know, is answered from the snapshot
instead (``decode_digest`` returns None).
"""

from __future__ import annotations

import msgpack

from ledger.digest import Age, CampaignDigest, Digest

FORMAT = 6
"""1 had no ``CampaignDigest.last_disclosed_at``, 2 no ``Digest.regions`` and
``Digest.located`` (the recipient's candidate states), 3 no ``CampaignDigest``
``help_request``, ``help_reply`` or ``opt_in_confirmation``, 4 no
``CampaignDigest.proof_missing``, 5 no due time or unattributed mark on
``Digest.pending``: rows in any of them are read from their snapshots, which are
folded and digested again.
"""
_HEADER = bytes([FORMAT])
_DIGEST_FIELDS = len(Digest._fields)
_CAMPAIGN_FIELDS = len(CampaignDigest._fields)
_AGE_FIELDS = len(Age._fields)
_new = tuple.__new__


def encode_digest(digest: Digest) -> bytes:
    packed: bytes = msgpack.packb(tuple(digest), use_bin_type=True)
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


def decode_payload(data: bytes) -> Digest | None:
    """``decode_digest`` of what follows the version byte."""
    raw = msgpack.unpackb(data, use_list=False)
    # The lengths are checked, so a field can never be read from the wrong place.
    # Typed in place with ``tuple.__new__``: what ``_make`` does, without a Python
    # call per tuple. The campaigns are typed when asked for (``Digest.campaign``).
    if len(raw) != _DIGEST_FIELDS:
        return None
    for campaign in raw[8].values():
        if len(campaign) != _CAMPAIGN_FIELDS:
            return None
    age = raw[5]
    if age is not None:
        if len(age) != _AGE_FIELDS:
            return None
        raw = (*raw[:5], _new(Age, age), *raw[6:])
    return _new(Digest, raw)
