"""Domain enums <-> proto enums, by name.

A proto enum ``ConsentTier`` mirrors the domain enum member ``PROMOTIONAL`` as
``CONSENT_TIER_PROMOTIONAL`` (Google API / buf STANDARD naming), and its zero
value ``CONSENT_TIER_UNSPECIFIED`` mirrors nothing: reading it means the writer
left the field unset.
"""

from __future__ import annotations

import enum
import re
from typing import Generic, Protocol, TypeVar

D = TypeVar("D", bound=enum.Enum)

NOT_SET = "is required and was not set"
"""How an enum field left at its zero value is refused, before the values it may
take: in the API's terms, not by the zero value's name (``..._UNSPECIFIED``), which
no client writes, and which a hold's reason, kept in the ledger, would keep for good."""


class WireFormatError(ValueError):
    """A message that cannot be read as a domain value; names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _ProtoEnum(Protocol):
    """What protobuf's generated ``EnumTypeWrapper`` offers that we use."""

    DESCRIPTOR: object

    def items(self) -> list[tuple[str, int]]: ...


def _upper_snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


class EnumMap(Generic[D]):
    """A total, one-to-one mapping between a domain enum and a proto enum.

    Built eagerly: a domain member without its proto value fails at import, not
    in production the first time that member is written.
    """

    def __init__(self, domain: type[D], proto: _ProtoEnum) -> None:
        name: str = proto.DESCRIPTOR.name  # type: ignore[attr-defined]
        self.prefix = _upper_snake(name) + "_"
        by_name = dict(proto.items())
        missing = [m.name for m in domain if self.prefix + m.name not in by_name]
        if missing:
            raise TypeError(f"proto enum {name} lacks values for {domain.__name__}: {missing}")
        self._to_proto: dict[D, int] = {m: by_name[self.prefix + m.name] for m in domain}
        self._from_proto: dict[int, D] = {v: m for m, v in self._to_proto.items()}
        # Keyed by identity as well: an Enum member hashes in Python code, and every
        # CanSend answer looks up a reason and its obligations. Members are singletons.
        self._by_id: dict[int, int] = {id(m): v for m, v in self._to_proto.items()}
        self.domain = domain
        # In the order the proto lists them, each as its short name ("keyword").
        self.choices = ", ".join(
            m.name.lower() for m in sorted(domain, key=lambda m: self._to_proto[m])
        )

    def to_proto(self, member: D) -> int:
        try:
            return self._by_id[id(member)]
        except KeyError:
            return self._to_proto[member]  # raises KeyError for what is not a member

    def from_proto(self, value: int, field: str) -> D:
        """The domain member for ``value``; ``WireFormatError`` for unset or unknown."""
        try:
            return self._from_proto[value]
        except KeyError:
            if value == 0:
                raise WireFormatError(field, f"{NOT_SET}: one of {self.choices}") from None
            raise WireFormatError(
                field, f"unknown {self.domain.__name__} value {value} (from a newer writer?)"
            ) from None

    def from_proto_or(self, value: int, field: str, default: D) -> D:
        """Like ``from_proto`` but an unset (zero) value means ``default``."""
        return default if value == 0 else self.from_proto(value, field)
