"""Reading old events with new classes: the upcast step of decoding.

Serialisation formats live at the edge (``services.wire.codec``); what stays here
is the domain's promise that a fact written by an older version of an event class
still replays. It follows the ``eventsourcing`` library's convention: a class with
``class_version = n`` defines ``upcast_v1_v2`` ... ``upcast_v{n-1}_v{n}``, each a
static method that brings the event's state dict one version forward (in place,
or by returning a new dict). The library's own ``Mapper`` cannot run it here: it
hands its transcoder a plain dict of the event's attributes, and the ledger's
stored form is the typed protobuf envelope, decoded outside any store too
(snapshots, the audit API, stream consumers).
"""

from __future__ import annotations

from typing import Any


def class_version(cls: type[Any]) -> int:
    """The version of ``cls``'s state: its ``class_version``, 1 when it declares none."""
    return int(getattr(cls, "class_version", 1))


def upcast(cls: type[Any], state: dict[str, Any], from_version: int) -> dict[str, Any]:
    """Bring ``state``, written by version ``from_version`` of ``cls``, up to date.

    Returns a new dict (the argument is not changed). Raises ``ValueError`` when
    the state was written by a newer version than ``cls`` knows, or is older and
    ``cls`` lacks an upcaster for a step.
    """
    target = class_version(cls)
    name = getattr(cls, "__qualname__", repr(cls))
    if from_version < 1:
        raise ValueError(f"{name}: schema version {from_version} is not a version")
    if from_version > target:
        raise ValueError(
            f"{name} v{from_version} was written by a newer version of this code "
            f"(this one knows up to v{target}); upgrade the reader"
        )
    upcast_state = dict(state)
    for version in range(from_version, target):
        step = getattr(cls, f"upcast_v{version}_v{version + 1}", None)
        if step is None:
            raise ValueError(f"{name} is v{target} but defines no upcast_v{version}_v{version + 1}")
        result = step(upcast_state)
        if result is not None:
            upcast_state = result
    return upcast_state
