"""The write phases: ``RecordOptIn``, ``RecordOptOut`` and ``RecordMessageSent`` at 64
in flight, and ``RecordMessagesSent`` (1,000 messages a call) at 8 calls in flight, on
the Kafka ledger and on the embedded default's PostgreSQL ledger.

Each path gets a database and topics of its own, so its projector applies every
write from the first (as in production, in the serving process). The campaign is
defined through the API, then one opt-in is written and read back fresh: the
service answers before anything is timed.

Every phase runs beside its baselines in the same run, one right after the other:

* the bare gRPC echo server (``bench.server``), answering a write's response;
* on the Kafka path, a raw ``aiokafka`` producer in a process of its own, with the
  ledger's producer settings (``KafkaLedgerSettings.producer_options``: acks=all,
  idempotent) and the very records the service writes for the phase's requests
  (the same encoded events, keys and headers), as many appends in flight as the
  phase has calls (a batched call's thousand records sent together), each awaited
  until the broker acknowledged every record of it.

Every call carries a request id (and a message id) of its own, so every call
writes; every message of a batch has a message id of its own. A batched phase's
rates are messages a second (calls times 1,000), its latencies a call's. After
each service phase the bench waits until the service is idle again (its projector
has applied what the phase wrote) before the next phase starts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from bench import client
from bench.cpu import WindowMeter, cpu_seconds, postgres_pids
from bench.infra import ADMIN_TOKEN, WRITE_TOKEN, Infra, ServerGroup, service
from bench.phones import phones as make_phones
from bench.seed import BRAND, CAMPAIGN, SENDER
from bench.server import ECHO_WRITE

CONCURRENCY = 64
BATCH = 1000
"""Messages a ``RecordMessagesSent`` call of the batched phase records."""
BATCH_CONCURRENCY = 8
"""Batched calls in flight: a sender's few workers, 8,000 messages between them."""
BATCH_GOAL = 50_000.0
"""Messages a second the batched phase should record (issue 21)."""
RAW_BATCHES = 8
"""Distinct batched calls whose records the raw producer cycles through."""
PARTITIONS = 12
PATHS = ("kafka", "postgres")
PATH_NAMES = {"kafka": "Kafka ledger", "postgres": "embedded default (PostgreSQL ledger)"}
GOALS = {"kafka": 3000.0, "postgres": 2000.0}
"""Acknowledged writes a second per process each path should reach (issue 21)."""
P99_GOAL = 0.050
METADATA = (("authorization", f"Bearer {WRITE_TOKEN}"),)
SERVICE = "/consent.v1.ConsentService/"
RAW_RECORDS = 2000
"""Distinct requests whose records the raw producer cycles through."""

Say = Callable[[str], None]


def _ts(value: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


@dataclass(frozen=True)
class Phase:
    name: str
    requests: list[bytes]
    """Pre-serialized requests, one per phone, without the fields ``unique`` names."""
    unique: tuple[int, ...]
    messages: list[Message] = field(repr=False)
    """The same requests as messages (with a request id), for the raw producer's records."""
    concurrency: int = CONCURRENCY
    per_call: int = 1
    """Messages a call records: rates are per message."""
    items: list[list[bytes]] = field(default_factory=list, repr=False)
    """Batched calls' messages, without the fields ``item_unique`` names
    (``client.Load.items``)."""
    item_field: int = 0
    item_unique: tuple[int, ...] = ()

    @property
    def method(self) -> str:
        return SERVICE + self.name


def _number(message: type[Message], name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


def phases(phones: list[str], at: datetime) -> list[Phase]:
    """The three write phases' requests over ``phones``, occurring at ``at``."""
    stamp = _ts(at)

    def opt_in(phone: str) -> api_pb2.RecordOptInRequest:
        return api_pb2.RecordOptInRequest(
            phone=phone,
            brand=BRAND,
            campaign=CAMPAIGN,
            tier=lpb.CONSENT_TIER_PROMOTIONAL,
            method=lpb.COLLECTION_METHOD_WEB_FORM,
            occurred_at=stamp,
            proof=lpb.ConsentProof(
                registered_at=stamp,
                name="Ada Lovelace",
                email="ada@example.com",
                ip_address="203.0.113.7",
                form_url="https://acme.example/join?src=bench",
                consent_text="Yes, text me Acme offers. Msg&data rates may apply. "
                "Reply STOP to cancel.",
                screenshot_ref="s3://proofs/form-v3.png",
                screenshot_sha256="9f" * 32,
            ),
        )

    def opt_out(phone: str) -> api_pb2.RecordOptOutRequest:
        return api_pb2.RecordOptOutRequest(
            phone=phone,
            brand=BRAND,
            campaign=CAMPAIGN,
            channel=lpb.REVOCATION_CHANNEL_KEYWORD,
            occurred_at=stamp,
            text="STOP",
        )

    def sent(phone: str) -> api_pb2.RecordMessageSentRequest:
        return api_pb2.RecordMessageSentRequest(
            phone=phone,
            brand=BRAND,
            campaign=CAMPAIGN,
            kind=lpb.MESSAGE_KIND_REGULAR,
            occurred_at=stamp,
            included_opt_out_language=True,
            identified_sender=True,
        )

    found = []
    for name, build, unique in (
        ("RecordOptIn", opt_in, ("request_id",)),
        ("RecordOptOut", opt_out, ("request_id",)),
        ("RecordMessageSent", sent, ("request_id", "message_id")),
    ):
        built = [build(p) for p in phones]
        numbers = tuple(_number(type(built[0]), f) for f in unique)
        messages = []
        for i, message in enumerate(built[:RAW_RECORDS]):
            named = type(message)()
            named.CopyFrom(message)
            for f in unique:
                setattr(named, f, f"raw-{i}-{uuid.uuid4().hex[:12]}")
            messages.append(named)
        found.append(Phase(name, [m.SerializeToString() for m in built], numbers, messages))
    found.append(batched_phase(phones, stamp))
    return found


def batched_phase(phones: list[str], stamp: Timestamp) -> Phase:
    """``RecordMessagesSent`` of ``BATCH`` messages to as many phones (fewer if fewer
    are given), each message as the single phase's ``RecordMessageSent`` says it, with
    the ``relied_on`` answer a sender that asked ``CanSend`` hands back. The calls go
    through ``phones`` a thousand at a time, as a campaign's sends go through its
    list: a number's state grows by one send each time round, not one every call."""
    size = min(BATCH, len(phones))
    rounds = [phones[start : start + size] for start in range(0, len(phones) - size + 1, size)]
    chosen = rounds[0]
    relied = api_pb2.ReliedOnAnswer(
        consistency_token="campaigns:0:1,subscribers:0:0",
        allowed=True,
        reason=api_pb2.REASON_CONSENT_ACTIVE,
        evidence_event_ids=["0c6f7d1e-4b8a-5c2d-9e3f-1a2b3c4d5e6f"],
    )

    def item(phone: str) -> api_pb2.SentMessage:
        return api_pb2.SentMessage(
            phone=phone,
            campaign=CAMPAIGN,
            kind=lpb.MESSAGE_KIND_REGULAR,
            occurred_at=stamp,
            included_opt_out_language=True,
            identified_sender=True,
            relied_on=relied,
        )

    items = [item(p) for p in chosen]
    batches = [[item(p).SerializeToString() for p in batch] for batch in rounds]
    messages = []
    for b in range(RAW_BATCHES):
        call = api_pb2.RecordMessagesSentRequest(
            request_id=f"raw-{b}-{uuid.uuid4().hex[:12]}", brand=BRAND, messages=items
        )
        for j, m in enumerate(call.messages):
            m.message_id = f"raw-{b}-{j}-{uuid.uuid4().hex[:8]}"
        messages.append(call)
    header = api_pb2.RecordMessagesSentRequest(brand=BRAND)
    return Phase(
        "RecordMessagesSent",
        [header.SerializeToString()],
        (_number(api_pb2.RecordMessagesSentRequest, "request_id"),),
        messages,
        concurrency=BATCH_CONCURRENCY,
        per_call=len(items),
        items=batches,
        item_field=_number(api_pb2.RecordMessagesSentRequest, "messages"),
        item_unique=(_number(api_pb2.SentMessage, "message_id"),),
    )


Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


def ledger_records(phase: Phase, prefix: str, now: datetime) -> list[list[Record]]:
    """What the Kafka ledger appends for each of the phase's requests: one list of
    (topic, key, value, headers) per request, encoded as ``KafkaLedger`` encodes them."""
    from ledger.commands import to_events
    from services.adapters.kafka_ledger import _key, record_headers
    from services.settings import KafkaLedgerSettings
    from services.wire.api import command_from_proto
    from services.wire.codec import encode_event

    settings = KafkaLedgerSettings(bootstrap_servers="-", topic_prefix=prefix)
    from ledger.ports import Stream

    out = []
    for message in phase.messages:
        command = command_from_proto(message)
        events = to_events(command, now)  # type: ignore[arg-type]
        out.append(
            [
                (settings.topic(Stream.of(e)), _key(e), encode_event(e), record_headers(e))
                for e in events
            ]
        )
    return out


# ---- the raw producer --------------------------------------------------------------


async def _produce(
    bootstrap: str, records: list[list[Record]], concurrency: int, begin: float, end: float,
    warmup: float,
) -> tuple[client.Result, float]:  # fmt: skip
    import aiokafka
    from aiokafka.errors import KafkaError

    from services.adapters.kafka_ledger import producer_options
    from services.settings import KafkaLedgerSettings

    options = producer_options(KafkaLedgerSettings(bootstrap_servers=bootstrap))
    producer = aiokafka.AIOKafkaProducer(**options)
    await producer.start()
    result = client.Result(seconds=end - begin)
    n = len(records)
    cpu: list[float] = []
    try:

        async def worker(k: int) -> None:
            i = k * 7919
            lat = result.latencies
            while True:
                started = time.monotonic()
                if started >= end:
                    return
                batch = records[i % n]
                i += 1
                try:
                    deliveries = [
                        await producer.send(topic, value, key=key, headers=headers)
                        for topic, key, value, headers in batch
                    ]
                    for delivery in deliveries:
                        await delivery
                    ok = True
                except KafkaError as exc:
                    ok = False
                    error = f"{type(exc).__name__}: {exc}"
                done = time.monotonic()
                if begin <= done < end:
                    if ok:
                        result.calls += 1
                        lat.append(done - started)
                    else:
                        result.errors += 1
                        result.first_error = result.first_error or error

        async def meter() -> None:
            await asyncio.sleep(max(0.0, begin - time.monotonic()))
            cpu.append(time.process_time())
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            cpu.append(time.process_time())

        now = time.monotonic()
        if now < begin - warmup:
            await asyncio.sleep(begin - warmup - now)
        await asyncio.gather(meter(), *(worker(k) for k in range(concurrency)))
    finally:
        await producer.stop()
    return result, cpu[1] - cpu[0] if len(cpu) == 2 else float("nan")


def _producer_process(
    bootstrap: str, records: list[list[Record]], concurrency: int, begin: float, end: float,
    warmup: float, conn: Connection,
) -> None:  # fmt: skip
    import logging

    import uvloop

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    result, cpu = uvloop.run(_produce(bootstrap, records, concurrency, begin, end, warmup))
    conn.send((result.calls, result.errors, result.latencies.tobytes(), result.first_error, cpu))
    conn.close()


def run_producer(
    bootstrap: str, records: list[list[Record]], concurrency: int, duration: float,
    warmup: float, kafka_pids: list[int],
) -> tuple[client.Result, float, float]:  # fmt: skip
    """The raw producer's result, its CPU µs per append and the broker's."""
    begin = time.monotonic() + client.START_DELAY + warmup
    end = begin + duration
    meter = WindowMeter(begin, end, {"kafka": lambda: kafka_pids})
    meter.start()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_producer_process, args=(bootstrap, records, concurrency, begin, end, warmup, child)
    )
    proc.start()
    child.close()
    try:
        calls, errors, raw, first_error, cpu = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    meter.join()
    latencies = array("d")
    latencies.frombytes(raw)
    result = client.Result(calls, errors, duration, latencies, first_error)

    def per(seconds: float) -> float:
        return seconds / calls * 1e6 if calls else float("nan")

    return result, per(cpu), per(meter.cpu.get("kafka", float("nan")))


# ---- the rows ----------------------------------------------------------------------


@dataclass
class WriteRow:
    path: str
    phase: str
    concurrency: int
    echo: client.Result
    svc: client.Result
    raw: client.Result | None = None
    svc_cpu: float = float("nan")
    """Service CPU µs per write."""
    pg_cpu: float = float("nan")
    kafka_cpu: float = float("nan")
    raw_cpu: float = float("nan")
    """The raw producer's CPU µs per append."""
    raw_kafka_cpu: float = float("nan")
    busy: float = float("nan")
    settled: float = float("nan")
    """Seconds after the phase until the service was idle again (projection caught up)."""
    per_call: int = 1
    """Messages a call recorded: the rates are per message, the CPU per message."""
    projector_cpu: float = float("nan")
    """With ``--projector separate``, the projector process's CPU µs per write, which
    ``svc_cpu`` includes (so both ways compare); NaN when it runs in the service."""

    @property
    def rate(self) -> float:
        """Writes (messages) a second the service recorded."""
        return self.svc.qps * self.per_call

    def line(self) -> str:
        def fig(r: client.Result | None) -> str:
            if r is None:
                return " | | "
            p50, p99 = ms(r.percentile(0.5)), ms(r.percentile(0.99))
            return f"{r.qps * self.per_call:,.0f} | {p50} | {p99}"

        raw_ratio = f"{self.svc.qps / self.raw.qps:.1%}" if self.raw and self.raw.qps else ""
        raw_cpu = f"{self.raw_cpu:,.0f}" if self.raw else ""
        echo_ratio = f"{self.svc.qps / self.echo.qps:.1%}" if self.echo.qps else ""
        phase = f"{self.phase} ({self.per_call:,}/call)" if self.per_call > 1 else self.phase
        return (
            f"| {self.path} | {phase} | {self.concurrency} | {fig(self.echo)} "
            f"| {fig(self.raw)} | {fig(self.svc)} | {echo_ratio} | {raw_ratio} "
            f"| {self.svc_cpu:,.0f} | {self.pg_cpu:,.0f} | {self.kafka_cpu:,.0f} "
            f"| {raw_cpu} | {self.busy:.0%} | {self.settled:.1f} |"
        )


HEADER = (
    "| ledger | phase | conc. | echo/s | echo p50 ms | echo p99 ms "
    "| raw aiokafka/s | raw p50 ms | raw p99 ms | service writes/s | p50 ms | p99 ms "
    "| service / echo | service / raw | service CPU µs/write | PostgreSQL CPU µs/write "
    "| Kafka CPU µs/write | raw producer CPU µs/append | machine busy | settled s |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    "---:|---:|---:|---:|"
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def goal_lines(rows: list[WriteRow]) -> list[str]:
    out = []
    for path in PATHS:
        for r in rows:
            if r.path == path and r.per_call > 1:
                raw = f"; raw aiokafka {r.raw.qps * r.per_call:,.0f}/s" if r.raw else ""
                out.append(
                    f"goal {PATH_NAMES[path]}, {r.phase}: >= {BATCH_GOAL:,.0f} messages/s: "
                    f"{'met' if r.rate >= BATCH_GOAL else 'NOT met'} ({r.rate:,.0f}/s, "
                    f"{r.per_call:,} a call, {r.concurrency} calls in flight{raw})"
                )
        mine = [r for r in rows if r.path == path and r.per_call == 1]
        if not mine:
            continue
        worst = min(mine, key=lambda r: r.svc.qps)
        slowest = max(mine, key=lambda r: r.svc.percentile(0.99))
        met = all(r.svc.qps >= GOALS[path] and r.svc.percentile(0.99) < P99_GOAL for r in mine)
        out.append(
            f"goal {PATH_NAMES[path]}: >= {GOALS[path]:,.0f} writes/s and p99 < "
            f"{P99_GOAL * 1000:.0f} ms at {CONCURRENCY} in flight: {'met' if met else 'NOT met'} "
            f"(lowest {worst.svc.qps:,.0f}/s, {worst.phase}; highest p99 "
            f"{ms(slowest.svc.percentile(0.99))} ms, {slowest.phase})"
        )
    return out


def row_figures(rows: list[WriteRow]) -> list[dict[str, Any]]:
    def res(r: client.Result | None, per_call: int) -> dict[str, float] | None:
        if r is None:
            return None
        return {
            "per_s": r.qps * per_call,
            "calls_per_s": r.qps,
            "p50_ms": r.percentile(0.5) * 1000,
            "p99_ms": r.percentile(0.99) * 1000,
            "calls": r.calls,
        }

    return [
        {
            "ledger": r.path,
            "phase": r.phase,
            "concurrency": r.concurrency,
            "messages_per_call": r.per_call,
            "echo": res(r.echo, r.per_call),
            "raw_aiokafka": res(r.raw, r.per_call),
            "service": res(r.svc, r.per_call),
            "cpu_us_per_write": {
                "service": r.svc_cpu,
                "projector_process": r.projector_cpu,
                "postgres": r.pg_cpu,
                "kafka": r.kafka_cpu,
                "raw_producer": r.raw_cpu,
                "kafka_during_raw": r.raw_kafka_cpu,
            },
            "machine_busy": r.busy,
            "settled_s": r.settled,
        }
        for r in rows
    ]


# ---- running them ------------------------------------------------------------------


async def settle(pids: list[int], limit: float = 120.0, idle_share: float = 0.15) -> float:
    """Seconds until ``pids`` together use less than ``idle_share`` of a core over a
    half-second window (the projector has applied what was written), at most ``limit``."""
    started = time.monotonic()
    before = cpu_seconds(pids)
    while time.monotonic() - started < limit:
        await asyncio.sleep(0.5)
        after = cpu_seconds(pids)
        used = sum(after.values()) - sum(before.values())
        before = after
        if used < 0.5 * idle_share:
            break
    return time.monotonic() - started


async def check_service(address: str, at: datetime) -> None:
    """Define the campaign, write one opt-in and read it back fresh: the service
    writes and its projector applies before anything is timed."""
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ConsentServiceStub(channel)
        await stub.DefineCampaign(
            api_pb2.DefineCampaignRequest(
                request_id="bench-define",
                brand=BRAND,
                campaign=CAMPAIGN,
                policy=lpb.CampaignPolicy(
                    purpose=lpb.CAMPAIGN_PURPOSE_PROMOTIONAL, sender_numbers=[SENDER]
                ),
                occurred_at=_ts(at - timedelta(days=1)),
            ),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=30,
        )
        first = phases(["+14155552671"], at)[0].messages[0]
        # A new projector's consumer group takes a few seconds to join: until then the
        # write is refused as behind (UNAVAILABLE), and may be tried again.
        for attempt in range(60):
            try:
                written = await stub.RecordOptIn(first, metadata=METADATA, timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        answer = await stub.CanSend(
            api_pb2.CanSendRequest(
                phone="+14155552671",
                brand=BRAND,
                campaign=CAMPAIGN,
                at_least_as_fresh=written.consistency_token,
            ),
            metadata=METADATA,
            timeout=30,
        )
        if answer.reason not in (api_pb2.REASON_CONSENT_ACTIVE, api_pb2.REASON_QUIET_HOURS):
            raise AssertionError(
                f"a fresh CanSend after the opt-in answered {api_pb2.Reason.Name(answer.reason)}"
            )


def measure(load: client.Load, pids: dict[str, Callable[[], list[int]]], label: str, say: Say
            ) -> tuple[client.Result, dict[str, float], float]:  # fmt: skip
    begin = time.monotonic() + client.START_DELAY + load.warmup
    meter = WindowMeter(begin, begin + load.duration, pids)
    meter.start()
    result = client.run(load)
    meter.join()
    per = {
        name: cpu / result.calls * 1e6 if result.calls else float("nan")
        for name, cpu in meter.cpu.items()
    }
    note = f", {result.errors} errors ({result.first_error})" if result.errors else ""
    if load.items:
        note += f"; {result.qps * len(load.items[0]):,.0f} messages/s"
    say(
        f"  {label:<30} c={load.concurrency:<3} {result.qps:>8,.0f}/s  "
        f"p50 {ms(result.percentile(0.5))} ms  p99 {ms(result.percentile(0.99))} ms  "
        + "  ".join(f"{k} {v:,.0f} µs/call" for k, v in per.items())
        + f"  machine {meter.busy:.0%} busy{note}"
    )
    if result.errors:
        raise RuntimeError(f"{label}: {result.errors} calls failed: {result.first_error}")
    return result, per, meter.busy


async def run_writes(
    args: argparse.Namespace, infra: Infra, say: Say, *, profile: str | None = None
) -> list[WriteRow]:
    """Every write phase on every path in ``args.write_paths``; with ``profile`` (a
    file name prefix), the service runs under cProfile and no baseline is run."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    phones = make_phones(args.write_phones)
    chosen = args.write_phases.split(",")
    write_phases = [p for p in phases(phones, at) if p.name in chosen]
    tag = uuid.uuid4().hex[:8]
    rows: list[WriteRow] = []
    kafka_pids = [infra.kafka.pid] if infra.kafka is not None and infra.kafka.pid else []
    for path in args.write_paths.split(","):
        alone = " and a projector process" if args.projector == "separate" else ""
        say(f"\n== writes, {PATH_NAMES[path]}, 1 uvloop process{alone}")
        dsn = await infra.fresh_database()
        prefix = f"{infra.prefix}w{path}-{tag}."
        svc_args = [
            "--dsn", dsn, "--kafka", infra.bootstrap, "--prefix", prefix,
            "--partitions", str(PARTITIONS), "--tokens", str(infra.tokens_file()),
            "--ledger", path,
        ]  # fmt: skip
        if profile is not None:
            svc_args += ["--profile", f"{profile}.{path}.prof"]
        raw_prefix = f"{infra.prefix}raw-{tag}."
        if path == "kafka" and profile is None:
            await _raw_topics(infra.bootstrap, raw_prefix)

        def load(address: str, method: str, phase: Phase, who: str) -> client.Load:
            return client.Load(
                address, method, phase.requests, METADATA, phase.concurrency, args.duration,
                warmup=args.warmup, processes=args.client_procs, unique=phase.unique,
                tag=f"{tag}{who}{phase.name}", items=phase.items, item_field=phase.item_field,
                item_unique=phase.item_unique,
            )  # fmt: skip

        with (
            ServerGroup("echo", "uvloop", 1, []) as echo,
            service(svc_args, args.projector) as (svc, proj_pids),
        ):
            svc_pids = [p.pid for p in svc.procs]
            await check_service(svc.address, at)
            say(f"  service ready in {svc.start_seconds:.1f} s; a write read back fresh")
            await settle(svc_pids + proj_pids)
            for phase in write_phases:
                echo_result = raw = None
                raw_cpu = raw_kafka_cpu = float("nan")
                if profile is None:
                    echo_result, _, _ = measure(
                        load(echo.address, ECHO_WRITE, phase, "e"),
                        {"echo": lambda: [p.pid for p in echo.procs]},
                        f"echo {phase.name}",
                        say,
                    )
                    if path == "kafka":
                        records = ledger_records(phase, raw_prefix, at)
                        raw, raw_cpu, raw_kafka_cpu = run_producer(
                            infra.bootstrap, records, phase.concurrency, args.duration,
                            args.warmup, kafka_pids,
                        )  # fmt: skip
                        raw_cpu /= phase.per_call
                        raw_kafka_cpu /= phase.per_call
                        say(
                            f"  {'raw aiokafka ' + phase.name:<30} c={phase.concurrency:<3} "
                            f"{raw.qps * phase.per_call:>8,.0f}/s  "
                            f"p50 {ms(raw.percentile(0.5))} ms  "
                            f"p99 {ms(raw.percentile(0.99))} ms  producer {raw_cpu:,.0f} "
                            f"µs/append  kafka {raw_kafka_cpu:,.0f} µs/append"
                            + (f", {raw.errors} errors ({raw.first_error})" if raw.errors else "")
                        )
                processes: dict[str, Callable[[], list[int]]] = {
                    "service": svc_pids.copy,
                    "postgres": postgres_pids,
                    "kafka": lambda: kafka_pids,
                }
                if proj_pids:
                    processes["projector"] = proj_pids.copy
                result, per, busy = measure(
                    load(svc.address, phase.method, phase, f"s{path[0]}"),
                    processes,
                    phase.name,
                    say,
                )
                settled = await settle(svc_pids + proj_pids)
                say(f"  {'':<30} idle again {settled:.1f} s after the phase")
                n = phase.per_call
                rows.append(
                    WriteRow(
                        path, phase.name, phase.concurrency, echo_result or client.Result(),
                        result, raw, (per["service"] + per.get("projector", 0.0)) / n,
                        per["postgres"] / n, per["kafka"] / n,
                        raw_cpu, raw_kafka_cpu, busy, settled, n,
                        per.get("projector", float("nan")) / n,
                    )
                )  # fmt: skip
    return rows


async def _raw_topics(bootstrap: str, prefix: str) -> None:
    """The raw producer's topics, made as the ledger makes its own."""
    from services.adapters.kafka_ledger import KafkaLedger
    from services.settings import KafkaLedgerSettings

    await KafkaLedger(
        KafkaLedgerSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            subscriber_partitions=PARTITIONS,
            replication_factor=1,
            min_insync_replicas=1,
        )
    ).ensure_topics()
