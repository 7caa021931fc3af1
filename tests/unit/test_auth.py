"""``TokenAuthenticator``: bearer tokens, and client certificates named in the file."""

from __future__ import annotations

import json

import pytest

from services.errors import Unauthenticated
from services.grpc_api.auth import Scope, TokenAuthenticator, token_digest


def authenticator(tmp_path, *entries: dict) -> TokenAuthenticator:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": list(entries)}))
    return TokenAuthenticator.from_file(path)


CHECKOUT = {
    "name": "checkout-service",
    "client_cert_name": "checkout.acme.internal",
    "scopes": ["check", "write"],
    "brands": ["acme"],
}
OPS = {"name": "ops", "sha256": token_digest("ops-secret"), "scopes": ["admin"], "brands": "*"}
BEARER = [("authorization", "Bearer ops-secret")]


def test_a_certificate_named_in_the_file_is_that_caller(tmp_path) -> None:
    auth = authenticator(tmp_path, CHECKOUT, OPS)
    principal = auth.authenticate([], lambda: ["checkout.acme.internal", "checkout"])
    assert principal.name == "checkout-service"
    assert principal.scopes == {Scope.CHECK, Scope.WRITE}
    assert principal.brands == {"acme"}
    assert auth.names_certificates and not authenticator(tmp_path, OPS).names_certificates


def test_a_certificate_no_entry_names_is_no_one(tmp_path) -> None:
    auth = authenticator(tmp_path, CHECKOUT, OPS)
    with pytest.raises(Unauthenticated):
        auth.authenticate([], lambda: ["laptop.ops.internal"])
    with pytest.raises(Unauthenticated):
        auth.authenticate([])  # no token, no certificate


def test_a_bearer_token_decides_and_the_certificate_is_not_even_read(tmp_path) -> None:
    auth = authenticator(tmp_path, CHECKOUT, OPS)

    def unread() -> list[str]:
        raise AssertionError("the certificate was read although a token was sent")

    assert auth.authenticate(BEARER, unread).name == "ops"
    with pytest.raises(Unauthenticated, match="unknown token"):
        auth.authenticate([("authorization", "Bearer nope")], unread)


def test_an_entry_with_neither_a_token_nor_a_certificate_name_is_refused(tmp_path) -> None:
    nameless = {"name": "nobody", "scopes": ["check"], "brands": "*"}
    with pytest.raises(
        ValueError, match=r"tokens\[1\] \(nobody\): give sha256 or client_cert_name"
    ):
        authenticator(tmp_path, OPS, nameless)
