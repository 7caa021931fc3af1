"""``TokenAuthenticator``: bearer tokens, and client certificates named in the file."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.cli import main as cli
from services.errors import Unauthenticated
from services.grpc_api.auth import (
    Scope,
    TokenAuthenticator,
    add_token,
    remove_token,
    token_digest,
    write_dev_tokens,
)
from services.grpc_api.credentials import file_stamp, follow_tokens
from services.metrics import ServiceMetrics
from services.settings import UNLIMITED, RateLimit


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


def test_a_token_added_to_the_file_authenticates_with_its_scopes_and_brands(tmp_path) -> None:
    path = tmp_path / "secrets" / "tokens.json"  # created, with its folder
    token = add_token(path, "checkout", ["check", "write"], ["acme"])
    ops = add_token(path, "ops", ["admin"], None)

    auth = TokenAuthenticator.from_file(path)
    principal = auth.authenticate([("authorization", f"Bearer {token}")])
    assert (principal.name, principal.scopes, principal.brands) == (
        "checkout",
        frozenset({Scope.CHECK, Scope.WRITE}),
        frozenset({"acme"}),
    )
    assert auth.authenticate([("authorization", f"Bearer {ops}")]).brands is None
    assert token not in path.read_text()  # only its digest is kept
    assert path.stat().st_mode & 0o077 == 0  # nobody else may read it


def test_adding_keeps_the_other_entries_and_refuses_a_name_twice(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [CHECKOUT, OPS]}))
    before = path.read_text()
    for name, scopes, brands, reason in (
        ("ops", ["check"], None, "already has a token named 'ops'"),
        ("new", ["read"], None, "'read' is not a scope"),
        ("new", [], None, "at least one scope"),
        ("new", ["check"], [], "at least one brand"),
    ):
        with pytest.raises(ValueError, match=reason):
            add_token(path, name, scopes, brands)
    assert path.read_text() == before  # nothing half-written

    add_token(path, "new", ["check"], ["acme"])
    names = [e["name"] for e in json.loads(path.read_text())["tokens"]]
    assert names == ["checkout-service", "ops", "new"]


def test_a_removed_token_no_longer_authenticates(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [CHECKOUT, OPS]}))
    remove_token(path, "ops")
    with pytest.raises(Unauthenticated):
        TokenAuthenticator.from_file(path).authenticate(BEARER)
    with pytest.raises(ValueError, match="no token named 'ops'"):
        remove_token(path, "ops")
    assert [e["name"] for e in json.loads(path.read_text())["tokens"]] == ["checkout-service"]


def test_a_file_that_is_not_a_tokens_file_is_left_alone(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    for text in ('{"users": []}', '{"tokens": {}}', "[]"):
        path.write_text(text)
        with pytest.raises(ValueError, match="not a tokens file"):
            add_token(path, "new", ["check"], None)
        assert path.read_text() == text


def test_contents_that_would_not_load_are_never_put_in_place(tmp_path, monkeypatch) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [OPS]}))
    before = path.read_text()
    load = TokenAuthenticator.from_file

    def refuse_staged(p):
        if p.name.startswith("."):  # the new contents, staged beside the file
            raise ValueError("staged contents refused")
        return load(p)

    monkeypatch.setattr(TokenAuthenticator, "from_file", staticmethod(refuse_staged))
    with pytest.raises(ValueError, match="staged contents refused"):
        add_token(path, "new", ["check"], None)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


def test_edits_at_once_lose_none_of_each_other(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    names = [f"caller-{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: add_token(path, n, ["check"], ["acme"]), names))
    assert sorted(e["name"] for e in json.loads(path.read_text())["tokens"]) == sorted(names)


def test_an_edit_keeps_the_file_s_mode_other_keys_and_symbolic_link(tmp_path) -> None:
    real = tmp_path / "secrets" / "tokens.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"_comment": "ops tokens", "tokens": [OPS]}))
    real.chmod(0o640)
    link = tmp_path / "tokens.json"
    link.symlink_to(real)

    add_token(link, "new", ["check"], ["acme"])

    assert link.is_symlink()  # the file it names was changed, not the link replaced
    data = json.loads(real.read_text())
    assert data["_comment"] == "ops tokens"
    assert [e["name"] for e in data["tokens"]] == ["ops", "new"]
    assert real.stat().st_mode & 0o777 == 0o640


def test_a_brand_that_is_not_a_brand_name_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="brand 'Acme'"):
        add_token(tmp_path / "tokens.json", "new", ["check"], ["Acme"])
    assert not (tmp_path / "tokens.json").exists()


def test_the_token_command_adds_prints_the_token_once_and_removes(tmp_path, capsys) -> None:
    path = tmp_path / "tokens.json"
    argv = ["token", "add", "checkout", "--scopes", "check,write", "--brands", "acme,globex"]
    assert cli.main([*argv, "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenAuthenticator.from_file(path).authenticate(
        [("authorization", f"Bearer {token}")]
    )
    assert principal.brands == frozenset({"acme", "globex"})

    assert cli.main([*argv, "--file", str(path)]) == 1  # the name is taken
    assert "already has a token named 'checkout'" in capsys.readouterr().err
    assert cli.main(["token", "add", "x", "--file", str(path)]) == 1
    assert "give --brands" in capsys.readouterr().err
    assert cli.main(["token", "remove", "checkout", "--file", str(path)]) == 0
    assert json.loads(path.read_text()) == {"tokens": []}


A_DIGEST = token_digest("secret")


@pytest.mark.parametrize(
    "text, refused",
    [
        ('{"tokens": ["x"]}', r"tokens\[0\] is not an object"),
        ('{"tokens": [{"sha256": "ab", "scopes": ["check"]}]}', r"tokens\[0\]\.name must be"),
        (
            '{"tokens": [{"name": "a", "sha256": "ab", "scopes": ["check"], "brands": 5}]}',
            "brands must be",
        ),
        ('{"users": []}', "not a tokens file"),
        ("[]", "not a tokens file"),
        ('{"tokens": {"name": "a"}}', "not a tokens file"),
    ],
)
def test_a_malformed_tokens_file_is_one_kind_of_error(tmp_path, text, refused) -> None:
    # The start and the file's follower catch ValueError (and OSError); any other
    # exception would stop the start with a traceback, or end the following.
    path = tmp_path / "tokens.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=refused):
        TokenAuthenticator.from_file(path)


def entry(**fields: object) -> dict[str, object]:
    return {"name": "checkout", "sha256": A_DIGEST, "scopes": ["check"], "brands": ["acme"]} | (
        fields
    )


@pytest.mark.parametrize(
    "bad, refused",
    [
        # A string is not a list: "acme" would have been the brands a, c, e and m.
        (entry(brands="acme"), r"tokens\[0\] \(checkout\): brands must be \"\*\" .* got 'acme'"),
        (entry(brands=[]), "brands must be"),
        (entry(brands=None), "brands must be"),
        ({k: v for k, v in entry().items() if k != "brands"}, "brands must be"),
        (entry(brands=["acme", 7]), "brands: 7 is not a brand name"),
        (entry(brands=["Acme Corp"]), "brands: 'Acme Corp' must be 1-64 chars"),
        (entry(brands=["*"]), "brands: '\\*' must be 1-64 chars"),
        (entry(scopes="check"), "scopes must be a list of check, write, audit, admin"),
        (entry(scopes=[]), "scopes must be a list"),
        (entry(scopes=["check", "root"]), "scopes: 'root' is not a valid Scope"),
        (entry(scopes=[["check"]]), "scopes must be a list"),
        (entry(name=5), r"tokens\[0\]\.name must be a string"),
        (entry(name=""), r"tokens\[0\]\.name must be a string"),
        (entry(name="x" * 129), r"tokens\[0\]\.name must be a string of 1-128"),
        (entry(sha256="ab"), "sha256 must be 64 hexadecimal characters"),
        (entry(sha256=A_DIGEST[:-1] + "g"), "sha256 must be 64 hexadecimal characters"),
        (entry(sha256=int(A_DIGEST, 16)), "sha256 must be 64 hexadecimal characters"),
        (
            {k: v for k, v in entry(client_cert_name="").items() if k != "sha256"},
            "client_cert_name must be a non-empty string",
        ),
    ],
)
def test_an_entry_of_the_wrong_type_is_refused_not_coerced(bad, refused) -> None:
    with pytest.raises(ValueError, match=refused):
        TokenAuthenticator.from_data({"tokens": [bad]})


@pytest.mark.parametrize(
    "key, value",
    [
        ("campaigns", ["promo"]),  # a restriction the service has no notion of
        ("brand", ["acme"]),  # beside "brands": which one was meant?
        ("expires_at", "2026-01-01T00:00:00Z"),
        ("Scopes", ["check"]),
    ],
)
def test_an_entry_key_it_does_not_know_is_refused_not_ignored(key, value) -> None:
    """An unknown key was dropped unread: an entry meant for acme's "promo" alone
    (or to expire) loaded as a token of every campaign of acme, for ever."""
    with pytest.raises(ValueError, match=rf"tokens\[0\] \(checkout\): {key!r} is not a key"):
        TokenAuthenticator.from_data({"tokens": [entry(**{key: value})]})


def test_an_entry_may_carry_notes_under_keys_that_start_with_an_underscore() -> None:
    """JSON has no comments: "_note" is how a tokens file's writer says who a token is for."""
    auth = TokenAuthenticator.from_data({"tokens": [entry(_note="the checkout service")]})
    assert auth is not None


def test_a_digest_or_a_certificate_name_taken_twice_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"tokens\[1\] \(ops\): sha256 is an earlier entry's: one token"
    ):
        TokenAuthenticator.from_data({"tokens": [entry(), entry(name="ops", brands="*")]})
    certificate = {"client_cert_name": "checkout.acme.internal"}
    with pytest.raises(
        ValueError, match=r"client_cert_name 'checkout\.acme\.internal' is an earlier"
    ):
        TokenAuthenticator.from_data(
            {"tokens": [entry(**certificate), entry(name="b", sha256="0" * 64, **certificate)]}
        )


def test_a_digest_in_capitals_still_matches_its_token() -> None:
    auth = TokenAuthenticator.from_data({"tokens": [entry(sha256=A_DIGEST.upper())]})
    principal = auth.authenticate([("authorization", "Bearer secret")])
    assert (principal.name, principal.brands) == ("checkout", frozenset({"acme"}))


def test_the_embedded_default_s_token_is_an_all_brands_admin(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [OPS]}))  # what an earlier run left
    token = write_dev_tokens(path)
    principal = TokenAuthenticator.from_file(path).authenticate(
        [("authorization", f"Bearer {token}")]
    )
    assert (principal.name, principal.scopes, principal.brands) == (
        "local-dev",
        frozenset(Scope),
        None,
    )
    assert [e["name"] for e in json.loads(path.read_text())["tokens"]] == ["local-dev"]
    assert path.stat().st_mode & 0o077 == 0


def test_an_entry_may_set_its_own_rate_limit() -> None:
    auth = TokenAuthenticator.from_data(
        {
            "tokens": [
                entry(rate=50, burst=200),
                entry(name="slow", sha256="1" * 64, rate=0.5),
                entry(name="ops", sha256="2" * 64, rate="unlimited"),
                entry(name="plain", sha256="3" * 64),
            ]
        }
    )

    def limit(secret_digest: str) -> RateLimit | None:
        return auth._by_digest[secret_digest].rate_limit

    assert limit(A_DIGEST) == RateLimit(50, 200)
    assert limit("1" * 64) == RateLimit(0.5, 1)  # a second's worth, at least one call
    assert limit("2" * 64) == UNLIMITED
    assert limit("3" * 64) is None  # the service's default


@pytest.mark.parametrize(
    "changes, refused",
    [
        ({"rate": 0}, "rate must be a number of calls a second above 0"),
        ({"rate": -5}, "rate must be a number"),
        ({"rate": "fast"}, "rate must be a number"),
        ({"rate": True}, "rate must be a number"),
        ({"rate": 10**400}, "rate must be a number"),  # past any float
        ({"rate": 10, "burst": 0}, "burst must be a whole number of calls, at least 1"),
        ({"rate": 10, "burst": 2.5}, "burst must be a whole number"),
        ({"rate": 10, "burst": 10**400}, "burst must be a whole number"),
        ({"burst": 10}, "burst needs a rate"),
        ({"rate": "unlimited", "burst": 10}, "an unlimited rate takes no burst"),
    ],
)
def test_a_rate_limit_that_is_not_one_is_refused(changes, refused) -> None:
    with pytest.raises(ValueError, match=rf"tokens\[0\] \(checkout\): {refused}"):
        TokenAuthenticator.from_data({"tokens": [entry(**changes)]})


def test_the_token_command_sets_a_rate_limit_and_refuses_one_that_is_not(tmp_path, capsys) -> None:
    path = tmp_path / "tokens.json"
    add = ["token", "add", "--scopes", "check", "--brands", "acme", "--file", str(path)]
    assert cli.main([*add[:2], "batch", *add[2:], "--rate", "2.5", "--burst", "10"]) == 0
    assert cli.main([*add[:2], "ops", *add[2:], "--rate", "unlimited"]) == 0
    token = capsys.readouterr().out.split()[0]
    auth = TokenAuthenticator.from_file(path)
    assert auth.authenticate([("authorization", f"Bearer {token}")]).rate_limit == RateLimit(
        2.5, 10
    )
    assert auth._by_digest[json.loads(path.read_text())["tokens"][1]["sha256"]].rate_limit == (
        UNLIMITED
    )
    before = path.read_text()
    for bad, reason in (
        (["--rate", "fast"], "--rate must be a number or 'unlimited', got 'fast'"),
        (["--rate", "0"], "rate must be a number of calls a second above 0"),
        (["--burst", "5"], "burst needs a rate"),
    ):
        assert cli.main([*add[:2], "new", *add[2:], *bad]) == 1
        assert reason in capsys.readouterr().err
    assert path.read_text() == before


def test_a_call_with_two_authorization_headers_is_no_one(tmp_path) -> None:
    """The first header decided: a proxy that adds its caller's token after the one a
    client sent let the client's own choice of token win, and which token acted
    depended on the order of the headers."""
    acme = {**CHECKOUT, "sha256": token_digest("acme-secret")}
    auth = authenticator(tmp_path, acme, OPS)
    for headers in (
        [("authorization", "Bearer acme-secret"), ("authorization", "Bearer ops-secret")],
        [("authorization", "Bearer ops-secret"), ("authorization", "Bearer acme-secret")],
        [("authorization", "Bearer ops-secret"), ("authorization", "Bearer ops-secret")],
    ):
        auth.authenticate(headers[:1])  # each alone is a caller, and is remembered
        with pytest.raises(Unauthenticated, match="one authorization header"):
            auth.authenticate(headers)


def test_a_name_taken_twice_is_refused() -> None:
    """Two entries under one name, of two brands, loaded: their callers shared one
    rate limit (one could use up the other's) and every event and audit read named
    them alike, so no record told acme's caller from globex's."""
    other = entry(sha256=token_digest("globex-secret"), brands=["globex"])
    with pytest.raises(
        ValueError, match=r"tokens\[1\] \(checkout\): name is an earlier entry's: one caller"
    ):
        TokenAuthenticator.from_data({"tokens": [entry(), other]})
    TokenAuthenticator.from_data({"tokens": [entry(), {**other, "name": "globex-checkout"}]})


async def test_the_follower_outlives_a_file_nested_too_deep_and_still_revokes(tmp_path) -> None:
    """json.loads raises RecursionError, no ValueError, for lists nested some hundred
    thousand deep: it ended the task that follows the file, and every token revoked
    after that kept working until a restart."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [OPS]}))
    with pytest.raises(ValueError, match="not a tokens file"):
        TokenAuthenticator.from_data(None)  # the loader's one kind of error
    deep = "[" * 200_000 + "]" * 200_000
    path.write_text('{"tokens": ' + deep + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        TokenAuthenticator.from_file(path)

    path.write_text(json.dumps({"tokens": [OPS]}))
    auth = TokenAuthenticator.from_file(path)
    following = asyncio.create_task(follow_tokens(path, auth, 0.01, file_stamp(path)))
    try:
        path.write_text('{"tokens": ' + deep + "}  ")
        await asyncio.sleep(0.2)
        assert not following.done()
        assert auth.authenticate(BEARER).name == "ops"  # kept, as for any unusable file
        path.write_text(json.dumps({"tokens": [{**OPS, "sha256": token_digest("rotated")}]}))
        for _ in range(100):
            try:
                auth.authenticate(BEARER)
            except Unauthenticated:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the revoked token still authenticates")
    finally:
        following.cancel()


async def test_the_follower_outlives_any_failure_to_read_the_file(tmp_path, monkeypatch) -> None:
    """Only OSError and ValueError were expected of a read; any other error ended the
    task that follows the file, and every later revocation went unread."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [OPS]}))
    auth = TokenAuthenticator.from_file(path)
    load = TokenAuthenticator.from_file
    failures = iter([RuntimeError("a loader's bug")])

    def flaky(read: object) -> TokenAuthenticator:
        for failure in failures:
            raise failure
        return load(read)  # type: ignore[arg-type]

    monkeypatch.setattr(TokenAuthenticator, "from_file", staticmethod(flaky))
    following = asyncio.create_task(follow_tokens(path, auth, 0.01, file_stamp(path)))
    try:
        path.write_text(json.dumps({"tokens": [OPS]}) + " ")
        await asyncio.sleep(0.2)
        assert not following.done()
        path.write_text(json.dumps({"tokens": [{**OPS, "sha256": token_digest("rotated")}]}))
        for _ in range(100):
            try:
                auth.authenticate(BEARER)
            except Unauthenticated:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the revoked token still authenticates")
    finally:
        following.cancel()


async def test_a_tokens_file_that_cannot_be_used_is_told_in_the_metrics(tmp_path) -> None:
    """A revoking edit that also broke the file left the revoked token working, with
    one warning in the log and nothing an alert could see."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [OPS]}))
    auth = TokenAuthenticator.from_file(path)
    metrics = ServiceMetrics()
    following = asyncio.create_task(follow_tokens(path, auth, 0.01, file_stamp(path), metrics))

    def scraped() -> dict[str, float]:
        return {
            sample.name: sample.value
            for family in metrics.registry().collect()
            for sample in family.samples
            if sample.name.startswith("consent_tokens_file")
        }

    async def until(unreadable: int) -> dict[str, float]:
        for _ in range(100):
            if (now := scraped()).get("consent_tokens_file_unreadable") == unreadable:
                return now
            await asyncio.sleep(0.02)
        raise AssertionError(f"consent_tokens_file_unreadable never became {unreadable}")

    try:
        first = await until(0)
        revoked = json.dumps({"tokens": [{**OPS, "sha256": token_digest("rotated")}]})
        path.write_text(revoked[:-1])  # the closing brace lost in the same edit
        broken = await until(1)
        assert auth.authenticate(BEARER).name == "ops"  # kept, as documented
        assert (
            broken["consent_tokens_file_loaded_timestamp_seconds"]
            == first["consent_tokens_file_loaded_timestamp_seconds"]
        )
        await asyncio.sleep(0.1)
        assert scraped()["consent_tokens_file_unreadable"] == 1  # for as long as it stands
        path.write_text(revoked)
        fixed = await until(0)
        with pytest.raises(Unauthenticated):
            auth.authenticate(BEARER)
        assert (
            fixed["consent_tokens_file_loaded_timestamp_seconds"]
            > first["consent_tokens_file_loaded_timestamp_seconds"]
        )
    finally:
        following.cancel()
