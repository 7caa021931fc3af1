"""Who is calling, and what they may do.

Callers present a bearer token (``authorization: Bearer <token>``). The server
knows tokens only by their SHA-256, each with a name, scopes and the brands
(tenants) it may act for. A caller acting for one brand can neither read nor
write another brand's consents.

With mutual TLS (``CONSENT_TLS_CLIENT_CA_FILE``) a caller may instead be known by
its client certificate: an entry with a ``client_cert_name`` grants its scopes and
brands to a verified certificate that carries that name (a subject alternative
name, or the common name). A bearer token, when one is sent, always decides.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.commands import check_name
from ledger.errors import InvalidRequest
from ledger.events import ANY_BRAND
from ledger.validation import identifier_problem
from services.errors import PermissionDenied, Unauthenticated
from services.settings import UNLIMITED, RateLimit
from services.usecases.access import Reader


class Scope(enum.Enum):
    CHECK = "check"
    WRITE = "write"
    AUDIT = "audit"
    ADMIN = "admin"

    # Members are equal only to themselves, so identity can hash them: in C, where
    # Enum's own hash is a Python call, and every call checks a scope in a set.
    __hash__ = object.__hash__


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    brands: frozenset[str] | None
    """None means every brand (an operator's token)."""
    rate_limit: RateLimit | None = None
    """The caller's own rate limit; None: the service's default (``CONSENT_RATE_LIMIT_RPS``)."""

    def require(self, scope: Scope, brand: str | None = None) -> None:
        if scope not in self.scopes:
            raise PermissionDenied("authorization", f"{self.name} lacks the {scope.value} scope")
        if brand is not None and self.brands is not None and brand not in self.brands:
            raise PermissionDenied("brand", f"{self.name} may not act for brand {brand!r}")

    @property
    def own_brands(self) -> tuple[str, ...]:
        """The brands an opt-out of this caller's is kept under when it names none that
        can be read: each of its brands, or, for a token of every brand (which cannot
        tell which it meant), ``ANY_BRAND``, which denies every brand until reviewed."""
        return (ANY_BRAND,) if self.brands is None else tuple(sorted(self.brands))

    def reader(self, request_id: str, via: str = "grpc") -> Reader:
        """This caller as an auditor (``services.usecases.access``): it needs the audit
        scope; the use cases hold it to its brands and record what it reads."""
        self.require(Scope.AUDIT)
        return Reader(self.name, self.brands, request_id, via)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_NAME_LENGTH = 128
"""The longest name of a caller (it is written on every event the caller records)."""
_ENTRY_KEYS = frozenset({"name", "sha256", "client_cert_name", "scopes", "brands", "rate", "burst"})
"""The keys an entry of the tokens file may have."""
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _scopes(value: object, where: str) -> frozenset[Scope]:
    known = ", ".join(s.value for s in Scope)
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{where}: scopes must be a list of {known}")
    try:
        return frozenset(Scope(s) for s in value)
    except ValueError as exc:
        raise ValueError(f"{where}: scopes: {exc} (one of {known})") from None


def _brands(entry: dict[str, object], where: str) -> frozenset[str] | None:
    """None (every brand) for ``"*"``, else the listed brands, each a valid brand name."""
    value = entry.get("brands")
    if value == "*":
        return None
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'{where}: brands must be "*" (every brand) or a list of brand names, got {value!r}'
        )
    for brand in value:
        if not isinstance(brand, str):
            raise ValueError(f"{where}: brands: {brand!r} is not a brand name")
        try:
            check_name(brand, "brand")
        except InvalidRequest as exc:
            raise ValueError(f"{where}: brands: {brand!r} {exc.reason}") from None
    return frozenset(value)


_LARGEST = sys.float_info.max


def _rate_limit(entry: dict[str, object], where: str) -> RateLimit | None:
    """The entry's ``rate`` (calls a second, or ``"unlimited"``) and ``burst``."""
    rate, burst = entry.get("rate"), entry.get("burst")
    if rate is None:
        if burst is not None:
            raise ValueError(f"{where}: burst needs a rate")
        return None
    if rate == "unlimited":
        if burst is not None:
            raise ValueError(f"{where}: an unlimited rate takes no burst")
        return UNLIMITED
    # An integer past the largest float is no rate (nor burst) either: float() of it
    # raised OverflowError, which no reader of the file expects (the follower ended).
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= _LARGEST:
        raise ValueError(
            f'{where}: rate must be a number of calls a second above 0, or "unlimited", '
            f"got {rate!r}"
        )
    if burst is not None and (
        isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= _LARGEST
    ):
        raise ValueError(f"{where}: burst must be a whole number of calls, at least 1")
    return RateLimit.of(float(rate), burst)


def _json(path: Path) -> Any:
    """The JSON in ``path``; ``ValueError`` for any text that is not JSON it can read.

    Lists nested some hundred thousand deep raise RecursionError, which the file's
    follower does not expect: it ended, and every later revocation went unread."""
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise ValueError("not a tokens file: nested too deeply to read") from None


_KNOWN_TOKENS = 1024
"""How many recently seen tokens keep their principal in memory (see ``authenticate``)."""


class TokenAuthenticator:
    def __init__(
        self,
        principals: Mapping[str, Principal],
        by_certificate: Mapping[str, Principal] | None = None,
    ) -> None:
        self._by_digest = dict(principals)
        self._by_certificate = dict(by_certificate or {})
        # Authorization headers whose token authenticated, so a caller's every call
        # need neither parse its header nor hash its token again. Only known tokens
        # are kept (a flood of made-up ones cannot grow it), and it is emptied when
        # full.
        self._known: dict[str | bytes, Principal] = {}
        self._taken = asyncio.Event()

    @staticmethod
    def from_file(path: Path) -> TokenAuthenticator:
        """``from_data`` of the JSON in ``path``; ``OSError`` if it cannot be read."""
        return TokenAuthenticator.from_data(_json(path))

    @staticmethod
    def from_data(data: object) -> TokenAuthenticator:
        """Load ``{"tokens": [{"name", "sha256" and/or "client_cert_name", "scopes": [...],
        "brands": [...] | "*", optionally "rate" and "burst"}]}``. Anything else is a
        ``ValueError`` that says what is wrong, whatever the shape of the mistake, so a
        caller catches one type.

        Types are checked, not coerced: ``"brands": "acme"`` would otherwise be the
        brands ``a``, ``c``, ``e`` and ``m``."""
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise ValueError('not a tokens file: expected {"tokens": [...]}')
        principals: dict[str, Principal] = {}
        certificates: dict[str, Principal] = {}
        names: set[str] = set()
        for i, entry in enumerate(data["tokens"]):
            if not isinstance(entry, dict):
                raise ValueError(f"not a tokens file: tokens[{i}] is not an object")
            name = entry.get("name")
            if not isinstance(name, str) or not 0 < len(name) <= _NAME_LENGTH:
                raise ValueError(
                    f"not a tokens file: tokens[{i}].name must be a string of 1-{_NAME_LENGTH} "
                    "characters"
                )
            # The name is written on every event the caller records (recorded_by).
            problem = identifier_problem(name)
            if problem is not None:
                raise ValueError(f"not a tokens file: tokens[{i}].name {problem}")
            where = f"tokens[{i}] ({name})"
            # A key read by nothing would be a restriction silently dropped: an entry
            # meant for some campaigns of acme, or to expire, granted all of acme.
            # JSON has no comments, so a key that starts with "_" is the writer's note.
            unknown = sorted(k for k in set(entry) - _ENTRY_KEYS if not k.startswith("_"))
            if unknown:
                raise ValueError(
                    f"{where}: {unknown[0]!r} is not a key of an entry (the keys are "
                    f"{', '.join(sorted(_ENTRY_KEYS))}, and notes under a key that starts "
                    "with '_'); it would be ignored, and a restriction lost"
                )
            # A caller's rate limit and the audit trail (recorded_by, who read what)
            # go by its name: two entries under one, say of two brands, would share a
            # bucket and be told apart by no record.
            if name in names:
                raise ValueError(
                    f"{where}: name is an earlier entry's: one caller, one entry (a token "
                    "and a client certificate of one caller go in the same entry)"
                )
            names.add(name)
            principal = Principal(
                name,
                _scopes(entry.get("scopes"), where),
                _brands(entry, where),
                _rate_limit(entry, where),
            )
            if "sha256" not in entry and "client_cert_name" not in entry:
                raise ValueError(f"{where}: give sha256 or client_cert_name")
            if "sha256" in entry:
                digest = entry["sha256"]
                if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                    raise ValueError(f"{where}: sha256 must be 64 hexadecimal characters")
                digest = digest.lower()  # as token_digest writes it, which it is compared to
                if digest in principals:
                    raise ValueError(
                        f"{where}: sha256 is an earlier entry's: one token, one caller"
                    )
                principals[digest] = principal
            if "client_cert_name" in entry:
                certificate = entry["client_cert_name"]
                if not isinstance(certificate, str) or not certificate:
                    raise ValueError(f"{where}: client_cert_name must be a non-empty string")
                if certificate in certificates:
                    raise ValueError(
                        f"{where}: client_cert_name {certificate!r} is an earlier entry's"
                    )
                certificates[certificate] = principal
        return TokenAuthenticator(principals, certificates)

    def take(self, other: TokenAuthenticator) -> None:
        """Answer from now on as ``other`` does (a tokens file read again). Every
        token is checked anew, so a token taken out of the file stops working."""
        self._by_digest, self._by_certificate = other._by_digest, other._by_certificate
        self._known = {}
        taken, self._taken = self._taken, asyncio.Event()
        taken.set()

    async def changed(self) -> None:
        """Return once ``take`` is next called: an open stream asks then whether its
        caller is still one, rather than before each message alone (an idle one would
        never ask)."""
        await self._taken.wait()

    def by_digest(self, digest: str) -> Principal | None:
        """The principal of the token whose SHA-256 is ``digest``, while the tokens
        file names it (the console's sessions keep the digest, never the token)."""
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    @property
    def names_certificates(self) -> bool:
        """Whether any entry grants its scopes to a client certificate."""
        return bool(self._by_certificate)

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        certificate_names: Callable[[], Sequence[str]] = lambda: (),
    ) -> Principal:
        """The caller's principal: from its bearer token, or else from the names of its
        verified client certificate (asked for only then: reading them costs a call)."""
        header: str | bytes | None = None
        for key, value in metadata:
            if key == "authorization":
                # Two headers name two callers, and taking either would let the order
                # of the headers (a client's, then a proxy's) choose who acts.
                if header is not None:
                    raise Unauthenticated(
                        "authorization", "send one authorization header, not several"
                    )
                header = value
        if header is None:
            if self._by_certificate:
                for name in certificate_names():
                    principal = self._by_certificate.get(name)
                    if principal is not None:
                        return principal
            raise Unauthenticated("authorization", "missing bearer token")
        principal = self._known.get(header)
        if principal is not None:
            return principal
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization", "expected 'Bearer <token>'")
        digest = token_digest(token.strip())
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                if len(self._known) >= _KNOWN_TOKENS:
                    self._known.clear()
                self._known[header] = principal
                return principal
        raise Unauthenticated("authorization", "unknown token")


def add_token(
    path: Path,
    name: str,
    scopes: Sequence[str],
    brands: Sequence[str] | None,
    rate: float | str | None = None,
    burst: int | None = None,
) -> str:
    """Add a new token named ``name`` to the tokens file (created if missing) and
    return it. Only its digest is written. ``brands`` None: every brand. ``rate``
    (calls a second, or ``"unlimited"``) and ``burst``: its own rate limit; None,
    the service's default.

    A name already in the file is refused: rotate by adding a new name, then
    removing the old one. See ``_edit`` for how the file is changed."""
    if not name:
        raise ValueError("a token needs a name")
    if brands is not None and not brands:
        raise ValueError("give at least one brand, or every brand ('*')")
    for brand in brands or ():
        try:
            check_name(brand, "brand")
        except InvalidRequest as exc:
            raise ValueError(f"brand {brand!r} {exc.reason}") from None
    if not scopes:
        raise ValueError(f"give at least one scope of {', '.join(s.value for s in Scope)}")
    for scope in scopes:
        try:
            Scope(scope)
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"{scope!r} is not a scope (one of {known})") from None
    token = secrets.token_urlsafe(32)
    entry: dict[str, object] = {
        "name": name,
        "sha256": token_digest(token),
        "scopes": list(scopes),
        "brands": "*" if brands is None else list(brands),
    }
    if rate is not None:
        entry["rate"] = rate
    if burst is not None:
        entry["burst"] = burst
    _rate_limit(entry, name)  # refused here, with what is wrong, not when the file loads

    def add(entries: list[dict[str, object]]) -> list[dict[str, object]]:
        if any(e.get("name") == name for e in entries):
            raise ValueError(f"{path} already has a token named {name!r}")
        return [*entries, entry]

    _edit(path, add)
    return token


def remove_token(path: Path, name: str) -> None:
    """Take the entry named ``name`` out of the tokens file: its token, or its
    certificate, stops working when the service next reads the file."""

    def remove(entries: list[dict[str, object]]) -> list[dict[str, object]]:
        kept = [e for e in entries if e.get("name") != name]
        if len(kept) == len(entries):
            raise ValueError(f"{path} has no token named {name!r}")
        return kept

    _edit(path, remove)


def _edit(path: Path, change: Callable[[list[dict[str, object]]], list[dict[str, object]]]) -> None:
    """Change the tokens file's entries, as one step a running service can follow.

    Under an exclusive lock (a ``.lock`` file beside it), so two edits at once
    cannot lose one another. The new file is written beside the old one, checked
    to load, flushed to disk and renamed over it; it keeps the old file's mode and
    owner, so the service can still read it. A symbolic link is followed to the
    file it names. Keys of the file other than ``tokens`` are kept."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, object] = {"tokens": []}
        old: os.stat_result | None = None
        if path.exists():
            old = path.stat()
            try:
                data = _json(path)
                TokenAuthenticator.from_data(data)  # the entries are ones it can load
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        entries = data["tokens"]
        if not isinstance(entries, list):
            raise ValueError(f'{path}: not a tokens file ({{"tokens": [...]}})')
        data["tokens"] = change(entries)
        fd, staged_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        staged = Path(staged_name)
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp's file is its owner's alone (0600)
                if old is not None:
                    os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode))
                    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                        os.fchown(out.fileno(), old.st_uid, old.st_gid)
                json.dump(data, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            TokenAuthenticator.from_file(staged)  # the service must be able to load it
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself, on disk
        finally:
            os.close(directory)


def write_dev_tokens(path: Path) -> str:
    """Create a tokens file with one all-brands admin token; return the token.

    Used only by the embedded default, so that ``make run`` works with no set-up;
    the token is printed once and only its digest is stored.
    """
    path.unlink(missing_ok=True)  # a new file, whatever an earlier run left
    return add_token(path, "local-dev", [s.value for s in Scope], None)
