"""Start real service instances (gRPC, Kafka ledger, PostgreSQL view) in-process,
and call them with a real gRPC client."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from aiokafka.admin import AIOKafkaAdminClient
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken, Stream
from services.adapters.kafka_ledger import topic_configs
from services.bootstrap import Runtime
from services.grpc_api.auth import token_digest
from services.settings import FreshnessSettings, KafkaLedgerSettings, Settings
from services.usecases import context
from services.usecases.context import utc_now
from tests.builders import proof_proto as proof
from tests.infra.topic_configs import altered

TOKENS = {
    "admin": ("admin-secret", ["check", "write", "audit", "admin"], "*"),
    "acme-app": ("acme-secret", ["check", "write", "audit"], ["acme"]),
    "acme-checker": ("acme-check-only", ["check"], ["acme"]),
    "globex-app": ("globex-secret", ["check", "write", "audit"], ["globex"]),
    "globex-admin": ("globex-admin-secret", ["check", "write", "audit", "admin"], ["globex"]),
    "acme-initech": ("acme-initech-secret", ["check", "write", "audit"], ["acme", "initech"]),
}


def write_tokens(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {
                        "name": name,
                        "sha256": token_digest(secret),
                        "scopes": scopes,
                        "brands": brands,
                    }
                    for name, (secret, scopes, brands) in TOKENS.items()
                ]
            }
        )
    )
    return path


def ctrl_c_as_at_a_terminal() -> None:
    """A child's ``preexec_fn``: a suite started in the background by a non-interactive
    shell (``make test &``) inherits SIGINT ignored, and so would the child; at a
    terminal Ctrl-C stops it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ts(value: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


def now() -> datetime:
    return datetime.now(UTC)


# How far the tests' clocks run ahead of the real one at least. The broker stamps
# what a test records with the real clock, and an answer in hindsight counts nothing
# recorded after the moment asked about: with the clock ahead by less than the hours
# a test looks back, its answers changed with the time of day the suite ran at.
LOOK_BACK = timedelta(days=1)


def noon_in_los_angeles(ahead: timedelta = timedelta(0)) -> datetime:
    """The first 20:00 UTC (12:00 in Los Angeles in winter, 13:00 in summer) more
    than ``LOOK_BACK`` and ``ahead`` after the real clock: a time of day no quiet
    hours bite at, after which every moment of the last day is after all a test
    records."""
    real = datetime.now(UTC)
    noon = real.replace(hour=20, minute=0, second=0, microsecond=0)
    while noon <= real + LOOK_BACK + ahead:
        noon += timedelta(days=1)
    return noon


class Clock:
    """A service's clock (``Runtime(clock=...)``) that reads ``now`` until the test
    moves it; by default the next noon in Los Angeles, so quiet hours never bite. It
    is ahead of the real clock, so the broker's ``recorded_at`` stamps are always
    "known" by the service's now, as they are in production."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = noon_in_los_angeles() if now is None else now

    def __call__(self) -> datetime:
        return self.now


def module_clock() -> Clock:
    """A ``Clock`` for a service the tests of a module share (``module_serve``): one
    an hour further ahead, which the module's minutes of tests then cannot use up."""
    return Clock(noon_in_los_angeles(ahead=timedelta(hours=1)))


@dataclass
class Client:
    stub: api_grpc.ConsentServiceStub
    token: str

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self.stub, rpc)

        async def call(request: Any, **kwargs: Any) -> Any:
            return await method(
                request,
                metadata=[("authorization", f"Bearer {self.token}")],
                timeout=kwargs.pop("timeout", 20),
                **kwargs,
            )

        return call


@asynccontextmanager
async def client(address: str, who: str = "admin") -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield Client(api_grpc.ConsentServiceStub(channel), TOKENS[who][0])


async def streamed(
    c: Client, messages: Sequence[api.ImportConsentsRequest]
) -> list[api.ImportConsentsResponse]:
    """The answers to an import stream of ``messages``."""

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        for message in messages:
            yield message

    stream = c.stub.ImportConsents(
        sent(), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
    )
    return [a async for a in stream]


async def imported(c: Client, *records: api.ImportRecord) -> api.ImportConsentsResponse:
    """The answer to an import stream of one message holding ``records``."""
    (answer,) = await streamed(c, [api.ImportConsentsRequest(records=list(records))])
    return answer


def kafka_service_env(
    tmp: Path, dsn: str, bootstrap: str, name: str, **more: str
) -> dict[str, str]:
    """The environment of a service run as its own process (to be killed) on the test
    broker, with topics and a projector group of its own named for ``name``; ``more``
    adds or overrides settings."""
    return {
        "CONSENT_LEDGER": "kafka",
        "CONSENT_KAFKA_BOOTSTRAP": bootstrap,
        "CONSENT_KAFKA_TOPIC_PREFIX": f"{name}-{uuid.uuid4().hex[:8]}.",
        "CONSENT_KAFKA_PARTITIONS": "4",
        "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
        "CONSENT_POSTGRES_DSN": dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp),
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
        "CONSENT_PROJECTOR_GROUP": f"{name}-{uuid.uuid4().hex[:8]}",
        **more,
    }


def kafka_ledger_env(kafka: KafkaLedgerSettings) -> dict[str, str]:
    """The settings naming ``kafka``'s ledger to a command run as its own process
    (``rebuild``, ``audit``, a projector): its broker, topics and replication."""
    return {
        "CONSENT_LEDGER": "kafka",
        "CONSENT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "CONSENT_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CONSENT_KAFKA_PARTITIONS": str(kafka.subscriber_partitions),
        "CONSENT_KAFKA_REPLICATION_FACTOR": str(kafka.replication_factor),
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": str(kafka.min_insync_replicas),
    }


def kafka_settings(bootstrap: str, prefix: str, partitions: int = 4) -> KafkaLedgerSettings:
    return KafkaLedgerSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        subscriber_partitions=partitions,
        replication_factor=1,
        min_insync_replicas=1,
        request_timeout_s=10,
        append_timeout_s=15,
    )


async def limit_subscriber_records(settings: KafkaLedgerSettings, to: str) -> None:
    """Have the broker take records of at most ``to`` bytes on ``settings``'
    subscriber topic (its ``max.message.bytes``), the rest of its settings kept."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        limit = {**topic_configs(settings), "max.message.bytes": to}
        await altered(admin, settings.topic(Stream.SUBSCRIBERS), limit)
    finally:
        await admin.close()


@asynccontextmanager
async def running(settings: Settings, clock: context.Clock = utc_now) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings, clock=clock)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def kafka_service_settings(tmp: Path, dsn: str, bootstrap: str) -> Settings:
    """``service_settings`` on the test broker, with topics of the test's own."""
    return service_settings(
        tmp, dsn, kafka=kafka_settings(bootstrap, f"e2e-{uuid.uuid4().hex[:8]}.")
    )


def service_settings(
    tmp: Path, dsn: str, *, kafka: KafkaLedgerSettings | None, group: str | None = None
) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        ledger="kafka" if kafka else "postgres",
        kafka=kafka,
        postgres_dsn=dsn,
        data_dir=tmp,
        tokens_file=write_tokens(tmp / "tokens.json"),
        freshness=FreshnessSettings(refresh_interval=0.05, wait_bound=5.0),
        shutdown_grace=2,
        projector_group=group or f"proj-{uuid.uuid4().hex[:8]}",
    )


@asynccontextmanager
async def serving(
    tmp: Path,
    dsn: str,
    bootstrap: str | None,
    *,
    name: str = "e2e",
    clock: context.Clock = utc_now,
    campaigns: Sequence[api.DefineCampaignRequest] = (),
    **changes: Any,
) -> AsyncIterator[Runtime]:
    """A service reading ``clock``, on the Kafka ledger at ``bootstrap`` with topics of
    its own named for ``name`` (None: on the embedded default's PostgreSQL ledger),
    with ``changes`` to its settings (``console_listen=...``), and ``campaigns``
    defined and applied before it is yielded."""
    kafka = kafka_settings(bootstrap, f"{name}-{uuid.uuid4().hex[:8]}.") if bootstrap else None
    settings = replace(service_settings(tmp, dsn, kafka=kafka), **changes)
    async with running(settings, clock) as runtime:
        await defined(runtime, campaigns)
        yield runtime


@asynccontextmanager
async def opted_in(
    tmp: Path, dsn: str, bootstrap: str | None, *, name: str, phone: str, sender: str
) -> AsyncIterator[tuple[Runtime, Client, Clock]]:
    """A service as ``serving`` gives, on a clock of its own two hours past noon in
    Los Angeles, where ``phone`` opted in to acme/promo (sent from ``sender``) half
    an hour before: where an erasure's story starts."""
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    first = clock.now - timedelta(minutes=30)
    campaign = define("acme", "promo", first - timedelta(days=1), [sender])
    async with (
        serving(tmp, dsn, bootstrap, name=name, clock=clock, campaigns=[campaign]) as runtime,
        client(runtime.address) as c,
    ):
        await c.RecordOptIn(opt_in(phone, "acme", "promo", first))
        yield runtime, c, clock


async def defined(runtime: Runtime, campaigns: Sequence[api.DefineCampaignRequest]) -> None:
    """Define each campaign as the operator and wait until the view has applied it.
    A new service's projector may take a while to join its group on a busy machine:
    a definition refused UNAVAILABLE meanwhile is sent again (its request id makes it
    a retry, as a client's would be), and the wait for it is a long one."""
    assert runtime.guard is not None
    async with client(runtime.address) as admin:
        for request in campaigns:
            for attempt in range(5):
                try:
                    w = await admin.DefineCampaign(request)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                        raise
            token = ConsistencyToken.decode(w.consistency_token)
            assert await runtime.guard.wait_for_token(token, timeout=60)


def opt_in(
    phone: str,
    brand: str,
    campaign: str,
    at: datetime,
    request_id: str | None = None,
    **changes: Any,
) -> api.RecordOptInRequest:
    fields: dict[str, Any] = dict(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        phone=phone,
        brand=brand,
        campaign=campaign,
        tier=lpb.CONSENT_TIER_PROMOTIONAL,
        method=lpb.COLLECTION_METHOD_WEB_FORM,
        proof=proof(at),
        occurred_at=ts(at),
    )
    fields.update(changes)
    return api.RecordOptInRequest(**fields)


def opt_out(
    phone: str,
    brand: str,
    campaign: str | None,
    at: datetime,
    request_id: str | None = None,
    **changes: Any,
) -> api.RecordOptOutRequest:
    """An opt-out through the API; campaign None (left unset) for every campaign of
    the brand."""
    fields: dict[str, Any] = dict(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        phone=phone,
        brand=brand,
        channel=lpb.REVOCATION_CHANNEL_API,
        occurred_at=ts(at),
    )
    if campaign is not None:
        fields["campaign"] = campaign
    fields.update(changes)
    return api.RecordOptOutRequest(**fields)


def sent(
    phone: str,
    brand: str,
    campaign: str,
    at: datetime,
    request_id: str | None = None,
    **changes: Any,
) -> api.RecordMessageSentRequest:
    """A message sent to ``phone`` through the API, with a provider message id of its
    own, the opt-out language included and the sender identified."""
    fields: dict[str, Any] = dict(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        phone=phone,
        brand=brand,
        campaign=campaign,
        message_id=f"SM{uuid.uuid4().hex[:16]}",
        occurred_at=ts(at),
        included_opt_out_language=True,
        identified_sender=True,
    )
    fields.update(changes)
    return api.RecordMessageSentRequest(**fields)


def inbound(
    phone: str,
    to: str,
    body: str,
    at: datetime | None,
    request_id: str | None = None,
    **changes: Any,
) -> api.HandleInboundMessageRequest:
    """A text from ``phone`` to the sender number ``to`` through the API, with a
    provider message id of its own; ``at`` None leaves the time unset."""
    fields: dict[str, Any] = dict(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        from_phone=phone,
        to_phone=to,
        body=body,
        message_id=f"SM{uuid.uuid4().hex[:12]}",
    )
    if at is not None:
        fields["occurred_at"] = ts(at)
    fields.update(changes)
    return api.HandleInboundMessageRequest(**fields)


def define(
    brand: str, campaign: str, at: datetime, numbers: Sequence[str] = (), **policy: Any
) -> api.DefineCampaignRequest:
    return api.DefineCampaignRequest(
        request_id=uuid.uuid4().hex,
        brand=brand,
        campaign=campaign,
        policy=lpb.CampaignPolicy(sender_numbers=list(numbers), **policy),
        occurred_at=ts(at - timedelta(seconds=1)),
    )


async def sends_from(
    c: Client, campaign: api.DefineCampaignRequest, numbers: Sequence[str], at: datetime
) -> None:
    """``campaign`` (``define``'s) sends from ``numbers`` from ``at`` on, through ``c``:
    a ChangeCampaignPolicy, so a number can move between campaigns or brands."""
    campaign.policy.sender_numbers[:] = numbers
    await c.ChangeCampaignPolicy(
        api.ChangeCampaignPolicyRequest(
            request_id=uuid.uuid4().hex, brand=campaign.brand, campaign=campaign.campaign,
            policy=campaign.policy, occurred_at=ts(at),
        )
    )  # fmt: skip


def status_details(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, reason) pairs of an error's ``google.rpc.BadRequest`` details."""
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def precondition_violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (subject, description) pairs of an error's ``google.rpc.PreconditionFailure``."""
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details if status else []:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            out += [(v.subject, v.description) for v in failure.violations]
    return out


def held_info(err: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """The metadata of a refusal's ``ErrorInfo`` saying its opt-out is held for review
    (reason ``OPT_OUT_HELD_FOR_REVIEW``), or None."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "OPT_OUT_HELD_FOR_REVIEW":
            assert info.domain == "consent-ledger"
            return dict(info.metadata)
    return None


def already_recorded(err: grpc.aio.AioRpcError) -> list[str]:
    """The event ids an ``ALREADY_EXISTS`` names: those of the request that first used
    the request id, from its ``google.rpc.ErrorInfo`` (checked against its
    ``ResourceInfo``)."""
    status = rpc_status.from_call(err)
    ids: list[str] = []
    named = ""
    for detail in status.details if status else []:
        info, resource = error_details_pb2.ErrorInfo(), error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            assert info.domain == "consent-ledger"
            if info.reason == "OPT_OUT_HELD_FOR_REVIEW":  # an opt-out held all the same
                continue
            assert info.reason == "REQUEST_ID_REUSED", info
            ids = info.metadata["event_ids"].split(",")
        elif detail.Unpack(resource):
            named = resource.resource_name
    assert named, "a ResourceInfo names the request id"
    return ids
