"""An opt-out that names no brand that can be read (left out, blank, only spaces,
or not a name) is held, through the real gRPC server on the real Kafka and
PostgreSQL: it was refused INVALID_ARGUMENT on ``brand`` and neither recorded nor
held, so CanSend went on allowing a number that asked to stop. It was one of the
caller's brands, which one cannot be told: it is held under each brand the caller's
token writes for, and under every brand ("*") for a token of every brand."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import TOKENS, client, define, held_info, opt_in, opt_out, ts
from tests.e2e.test_bulk_import import import_cli, token_of, write_csv

pytestmark = pytest.mark.asyncio(loop_scope="session")

BRANDS = ("acme", "globex", "initech")
HELD_UNDER = {
    "acme-app": {"acme"},
    "acme-initech": {"acme", "initech"},
    "admin": set(BRANDS),
}
"""The brands each caller's brandless opt-out must deny: its own, or all of them."""
UNREAD = {"blank": "", "spaces": "   ", "not a name": "N/A"}
MEANT = {
    "a NUL": "ac\x00me",
    "a line break": "acme\n",
    "a noncharacter and a DEL": "acm\ufffe\x7fe",
    "a line break and a star": "ac\n*me",
    "a bang": "Acme!",
}
"""Brands that are no name, but plainly acme's: an export's control characters or
a symbol typed inside it."""
SEPARATED = {"a hyphen": "ac-me", "a dot": "a.cme", "an underscore": "acme_", "capitals": "ACME"}
"""Brands that differ from acme only by separators or case: "ac-me" and "a.cme" are
valid names, which nothing refused before the view was asked."""


def numbers_of(block: int) -> Callable[[int], str]:
    """The ten numbers of a test's own block: ``phone(i)`` for i in 0..9."""
    return lambda i: f"+1415555{6000 + 10 * block + i:04d}"


@pytest.fixture(scope="module")
async def shared(module_serve) -> Runtime:
    """Each brand's promo campaign, on one service for the module's tests."""
    now = datetime.now(UTC)
    campaigns = [define(brand, "promo", now - timedelta(days=60)) for brand in BRANDS]
    return await module_serve(name="nobrand", campaigns=campaigns)


BLOCKS = itertools.count()


@pytest.fixture
async def service(shared: Runtime):
    """Ten numbers of the test's own (``phone``), each opted in to each brand's promo
    campaign a day ago: the holds and answers of one test are of numbers no other
    test writes."""
    runtime, now, phone = shared, datetime.now(UTC), numbers_of(next(BLOCKS))
    async with client(runtime.address) as admin:
        for i in range(10):
            for brand in BRANDS:
                w = await admin.RecordOptIn(
                    opt_in(phone(i), brand, "promo", now - timedelta(days=1))
                )
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    return runtime, now, phone


async def denied_brands(runtime: Runtime, number: str, fresh: str) -> set[str]:
    """The brands whose promo CanSend denies ``number`` for, at a coming noon in Los
    Angeles (no quiet hours), from a view that has applied ``fresh``."""
    noon = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
    noon += timedelta(days=1)
    denied = set()
    async with client(runtime.address) as admin:
        for brand in BRANDS:
            answer = await admin.CanSend(
                api.CanSendRequest(
                    phone=number, brand=brand, campaign="promo", at=ts(noon),
                    at_least_as_fresh=fresh,
                )
            )  # fmt: skip
            if not answer.allowed:
                assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, (brand, answer)
                denied.add(brand)
    return denied


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_a_record_opt_out_without_a_readable_brand_is_held_under_the_callers(service, who):
    """Before: INVALID_ARGUMENT on brand, nothing held, every brand allowed."""
    runtime, now, phone = service
    async with client(runtime.address, who) as caller:
        for i, (name, brand) in enumerate(UNREAD.items()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await caller.RecordOptOut(opt_out(phone(i), brand, "promo", now))
            err = caught.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert err.details().startswith("brand: "), (name, err.details())
            info = held_info(err)
            assert info is not None, (name, err.details())
            denied = await denied_brands(runtime, phone(i), info["consistency_token"])
            assert denied == HELD_UNDER[who], name


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_an_imported_opt_out_without_a_readable_brand_is_held_under_the_callers(
    service, who, tmp_path
):
    """A CSV's blank brand, a JSON line's brand left out (readable otherwise, and with
    its time unreadable too): each refused on brand, and held."""
    runtime, now, phone = service
    stop = {
        "type": "opt_out",
        "campaign": "promo",
        "occurred_at": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "channel": "keyword",
        "text": "STOP",
    }
    csv_file = write_csv(
        tmp_path / "export.csv",
        [
            {**stop, "import_id": f"{who}-blank", "phone": phone(5), "brand": ""},
            {**stop, "import_id": f"{who}-spaces", "phone": phone(6), "brand": "  "},
        ],
    )
    lines = [
        {**stop, "import_id": f"{who}-none", "phone": phone(7)},
        {**stop, "import_id": f"{who}-none-bad-time", "phone": phone(8), "occurred_at": "soon"},
    ]
    jsonl_file = tmp_path / "export.jsonl"
    jsonl_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for export, numbers in ((csv_file, (5, 6)), (jsonl_file, (7, 8))):
        _, out, err = await import_cli(
            str(export), "--address", runtime.address, token=TOKENS[who][0]
        )
        assert "refused: 2" in out, out + err
        assert "brand: " in out and "; held for review" in out, out + err
        fresh = token_of(out)
        for i in numbers:
            assert await denied_brands(runtime, phone(i), fresh) == HELD_UNDER[who], (i, out)


async def test_an_every_brand_hold_is_listed_under_star_and_a_dismissal_lifts_it(service):
    """The way out for the "*" hold of a caller of every brand: an operator lists it
    under "*" and dismisses it, and every brand may send again."""
    runtime, now, phone = service
    async with client(runtime.address) as admin:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.RecordOptOut(opt_out(phone(9), "", "promo", now))
        info = held_info(caught.value)
        assert info is not None
        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="*", at_least_as_fresh=info["consistency_token"]
            )
        )
        assert info["candidate_event_id"] in [c.event.event_id for c in queue.candidates]
        done = await admin.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex, phone=phone(9), brand="*",
                candidate_event_id=info["candidate_event_id"],
                resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED, occurred_at=ts(datetime.now(UTC)),
            )
        )  # fmt: skip
    assert await denied_brands(runtime, phone(9), done.consistency_token) == set()


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_a_record_opt_out_whose_brand_reads_as_one_in_use_is_held_under_it(service, who):
    """Before: held, for a token of every brand, under "*", which denied every brand
    until an operator dismissed it (and under both brands of a two-brand token)."""
    runtime, now, phone = service
    async with client(runtime.address, who) as caller:
        for i, (name, brand) in enumerate(MEANT.items()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await caller.RecordOptOut(opt_out(phone(i), brand, "promo", now))
            err = caught.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert err.details().startswith("brand: "), (name, err.details())
            info = held_info(err)
            assert info is not None, (name, err.details())
            denied = await denied_brands(runtime, phone(i), info["consistency_token"])
            assert denied == {"acme"}, name


async def test_a_brand_that_reads_as_another_callers_holds_nothing(service):
    """A brand spelled loosely is no way round the token's brands, nor is it held
    under the caller's own brands, which the person did not ask to stop."""
    runtime, now, phone = service
    async with client(runtime.address, "globex-app") as caller:
        for i, (name, brand) in enumerate(MEANT.items()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await caller.RecordOptOut(opt_out(phone(i), brand, "promo", now))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert held_info(caught.value) is None, (name, caught.value.details())


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_an_imported_opt_out_whose_brand_reads_as_one_in_use_is_held_under_it(
    service, who, tmp_path
):
    runtime, now, phone = service
    numbers, out, err = await _import_stops(runtime, now, phone, who, MEANT, tmp_path, who)
    assert f"refused: {len(MEANT)}" in out, out + err
    fresh = token_of(out)
    for name, number in numbers.items():
        assert await denied_brands(runtime, number, fresh) == {"acme"}, (name, out)


@pytest.mark.parametrize(
    ("who", "unread_under"),
    [("acme-app", "acme"), ("acme-initech", "acme,initech"), ("admin", "*")],
)
async def test_a_held_refusal_names_the_brands_it_is_held_under(service, who, unread_under):
    """The ErrorInfo named the holds but not their brands: a caller could not tell
    which review queue to look in, "*" above all."""
    runtime, now, phone = service
    async with client(runtime.address, who) as caller:
        held = {}
        for i, brand in enumerate(("", "ac\x00me")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await caller.RecordOptOut(opt_out(phone(i), brand, "promo", now))
            held[brand] = held_info(caught.value)
        request_id = f"r-{uuid.uuid4().hex}"
        await caller.RecordOptIn(opt_in(phone(2), "acme", "promo", now, request_id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await caller.RecordOptOut(opt_out(phone(2), "acme", "promo", now, request_id))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        held["reused id"] = held_info(caught.value)
    assert {k: v and v.get("held_brands") for k, v in held.items()} == {
        "": unread_under,
        "ac\x00me": "acme",
        "reused id": "acme",
    }


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_a_record_opt_out_whose_brand_differs_by_separators_is_held_under_it(service, who):
    """Before: "ac-me" from a token of acme alone (or acme and initech) was refused
    PERMISSION_DENIED and nothing held, though the person meant acme, which the
    caller writes for."""
    runtime, now, phone = service
    async with client(runtime.address, who) as caller:
        for i, (name, brand) in enumerate(SEPARATED.items()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await caller.RecordOptOut(opt_out(phone(i), brand, "promo", now))
            err = caught.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert err.details().startswith("brand: "), (name, err.details())
            info = held_info(err)
            assert info is not None, (name, err.details())
            assert info["held_brands"] == "acme", (name, info)
            denied = await denied_brands(runtime, phone(i), info["consistency_token"])
            assert denied == {"acme"}, name


async def test_a_brand_that_differs_by_separators_from_another_callers_holds_nothing(
    service, tmp_path
):
    """globex's token writing "ac-me" is refused as not its brand, live and on import,
    and nothing is held: acme is not globex's to deny."""
    runtime, now, phone = service
    async with client(runtime.address, "globex-app") as caller:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await caller.RecordOptOut(opt_out(phone(0), "ac-me", "promo", now))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert held_info(caught.value) is None
    when = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = {
        "type": "opt_out", "import_id": "globex-sep", "phone": phone(1), "brand": "ac-me",
        "campaign": "promo", "occurred_at": when, "channel": "keyword", "text": "STOP",
    }  # fmt: skip
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps(line) + "\n")
    _, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["globex-app"][0]
    )
    assert "PERMISSION_DENIED" in out and "held for review: 0" in out, out + err
    async with client(runtime.address) as admin:
        for i in (0, 1):
            # A write to the number after both: a view that has applied it has
            # applied any hold they made.
            later = await admin.RecordOptIn(opt_in(phone(i), "globex", "promo", now))
            assert await denied_brands(runtime, phone(i), later.consistency_token) == set()


@pytest.mark.parametrize("who", list(HELD_UNDER))
async def test_an_imported_opt_out_whose_brand_differs_by_separators_is_held_under_it(
    service, who, tmp_path
):
    """Before: "ac-me" from a token of every brand was imported as a ConsentRevoked
    under "ac-me", and acme went on sending; from a token of acme alone it was
    refused PERMISSION_DENIED and nothing held. RecordOptOut refuses and holds it."""
    runtime, now, phone = service
    numbers, out, err = await _import_stops(
        runtime, now, phone, who, SEPARATED, tmp_path, f"{who}-sep"
    )
    assert f"imported 0 of {len(SEPARATED)}" in out, out + err
    assert f"held for review: {len(SEPARATED)}" in out, out + err
    fresh = token_of(out)
    for name, number in numbers.items():
        assert await denied_brands(runtime, number, fresh) == {"acme"}, (name, out)


async def _import_stops(
    runtime, now, phone, who: str, brands: dict[str, str], tmp_path, id_prefix: str
) -> tuple[dict[str, str], str, str]:
    """Import, with ``who``'s token, a STOP for each of ``brands`` (a name to the brand
    written) under a number of its own; answers the numbers and the CLI's output."""
    stop = {
        "type": "opt_out",
        "campaign": "promo",
        "occurred_at": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "channel": "keyword",
        "text": "STOP",
    }
    numbers = {name: phone(5 + i) for i, name in enumerate(brands)}
    lines = [
        {**stop, "import_id": f"{id_prefix}-{i}", "phone": numbers[name], "brand": brand}
        for i, (name, brand) in enumerate(brands.items())
    ]
    export = tmp_path / "export.jsonl"
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, out, err = await import_cli(str(export), "--address", runtime.address, token=TOKENS[who][0])
    return numbers, out, err
