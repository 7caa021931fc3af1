"""The import phase: ``ImportConsents`` end to end, beside a raw ``aiokafka`` producer.

On each ledger path in ``--import-paths`` (a fresh database and topics, one uvloop
service process), the campaign is defined through the API, then N opt-ins with a
web form's proof (every tenth number also opts out later) are imported through
one ``ImportConsents`` stream: chunks of 1,000, pre-serialized, at most 8 sent
ahead of their answers, as ``consent-ledger import`` sends them. Three times are
taken from the first message sent:

* **appended**: the last chunk answered (every record checked, its id claimed,
  appended and acknowledged by the ledger);
* **end to end**: a ``CanSendBatch`` of 1,000 sampled numbers, asked
  ``at_least_as_fresh`` the import's last token, answers every one of them right
  (projected into PostgreSQL, loaded into the replica, answerable by CanSend);
* **again**: the same import run a second time, which must write nothing.

The baseline, on the Kafka path, in the same run just before: a raw ``aiokafka``
producer (in a process of its own) with the ledger's producer settings
(acks=all, idempotent) appending the very records the import appends (the same
encoded events, keys and headers), all sent at once, each awaited until the
broker acknowledged it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import ledger_pb2 as lpb

from bench.cpu import cpu_seconds
from bench.infra import Infra, service
from bench.phones import phones as make_phones
from bench.seed import BRAND, CAMPAIGN
from bench.writes import METADATA, PARTITIONS, _raw_topics, _ts, check_service

Say = Callable[[str], None]
CHUNK = 1000
WINDOW = 8
OPT_OUT_EVERY = 10
GOAL = 30_000.0
"""Records a second, end to end (issue 21), and a million in under a minute."""
METHOD = "/consent.v1.ConsentService/ImportConsents"
SAMPLE = 1000


def records(phones: list[str], at: datetime) -> list[api_pb2.ImportRecord]:
    """An opt-in per number, 30 days before ``at``, and for every tenth number an
    opt-out a day before ``at``; each with an import id of its own."""
    granted, stopped = _ts(at - timedelta(days=30)), _ts(at - timedelta(days=1))
    out = []
    for i, phone in enumerate(phones):
        out.append(
            api_pb2.ImportRecord(
                opt_in=api_pb2.RecordOptInRequest(
                    request_id=f"bench-import-{i}",
                    phone=phone,
                    brand=BRAND,
                    campaign=CAMPAIGN,
                    tier=lpb.CONSENT_TIER_PROMOTIONAL,
                    method=lpb.COLLECTION_METHOD_WEB_FORM,
                    occurred_at=granted,
                    proof=lpb.ConsentProof(
                        registered_at=granted,
                        name="Ada Lovelace",
                        email="ada@example.com",
                        ip_address="203.0.113.7",
                        form_url="https://acme.example/join?src=import",
                        consent_text="Yes, text me Acme offers. Reply STOP to cancel.",
                        screenshot_ref="s3://proofs/form-v3.png",
                        screenshot_sha256="9f" * 32,
                    ),
                )
            )
        )
        if i % OPT_OUT_EVERY == OPT_OUT_EVERY - 1:
            out.append(
                api_pb2.ImportRecord(
                    opt_out=api_pb2.RecordOptOutRequest(
                        request_id=f"bench-import-stop-{i}",
                        phone=phone,
                        brand=BRAND,
                        campaign=CAMPAIGN,
                        channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                        occurred_at=stopped,
                        text="STOP",
                    )
                )
            )
    return out


def chunks(recs: list[api_pb2.ImportRecord]) -> list[bytes]:
    return [
        api_pb2.ImportConsentsRequest(records=recs[i : i + CHUNK]).SerializeToString()
        for i in range(0, len(recs), CHUNK)
    ]


Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


def ledger_records(recs: list[api_pb2.ImportRecord], prefix: str, now: datetime) -> list[Record]:
    """What the Kafka ledger appends for ``recs``, encoded as ``KafkaLedger`` does."""
    from ledger.commands import to_events
    from ledger.ports import Stream
    from services.adapters.kafka_ledger import _key, record_headers
    from services.settings import KafkaLedgerSettings
    from services.wire.api import command_from_proto
    from services.wire.codec import encode_event

    settings = KafkaLedgerSettings(bootstrap_servers="-", topic_prefix=prefix)
    out = []
    for record in recs:
        command = command_from_proto(getattr(record, str(record.WhichOneof("record"))))
        for e in to_events(command, now):  # type: ignore[arg-type]
            out.append((settings.topic(Stream.of(e)), _key(e), encode_event(e), record_headers(e)))
    return out


# ---- the raw producer --------------------------------------------------------------


async def _produce_all(bootstrap: str, recs: list[Record]) -> tuple[float, float]:
    import aiokafka

    from services.adapters.kafka_ledger import producer_options
    from services.settings import KafkaLedgerSettings

    producer = aiokafka.AIOKafkaProducer(
        **producer_options(KafkaLedgerSettings(bootstrap_servers=bootstrap))
    )
    await producer.start()
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        deliveries = [
            await producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in recs
        ]
        await asyncio.gather(*deliveries)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()


def _producer_process(bootstrap: str, recs: list[Record], conn: Connection) -> None:
    import logging

    import uvloop

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    conn.send(uvloop.run(_produce_all(bootstrap, recs)))
    conn.close()


def run_producer(bootstrap: str, recs: list[Record]) -> tuple[float, float]:
    """Seconds the raw producer took to have every record acknowledged, and its CPU."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_producer_process, args=(bootstrap, recs, child))
    proc.start()
    child.close()
    try:
        seconds, cpu = parent.recv()
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    return float(seconds), float(cpu)


# ---- the import --------------------------------------------------------------------


@dataclass
class Imported:
    seconds: float
    """From the first message to the last answer."""
    imported: int
    present: int
    refused: int
    token: str
    first_refusal: str = ""


async def import_all(address: str, messages: list[bytes]) -> Imported:
    """Every message through one ImportConsents stream, at most ``WINDOW`` ahead."""
    from ledger.ports import ConsistencyToken

    room = asyncio.Semaphore(WINDOW)

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            await room.acquire()
            yield message

    result = Imported(0.0, 0, 0, 0, "")
    token = ConsistencyToken({})
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=api_pb2.ImportConsentsResponse.FromString,
        )
        started = time.perf_counter()
        async for answer in call(requests(), metadata=METADATA, timeout=3600):
            room.release()
            result.imported += answer.imported
            result.present += answer.already_present
            result.refused += len(answer.refusals)
            if answer.refusals and not result.first_refusal:
                refusal = answer.refusals[0]
                result.first_refusal = f"{refusal.code} {refusal.violations}"
            if answer.consistency_token:
                token = token.merge(ConsistencyToken.decode(answer.consistency_token))
        result.seconds = time.perf_counter() - started
    result.token = token.encode()
    return result


async def answerable(address: str, sample: list[str], revoked: set[str], token: str) -> None:
    """Until a CanSendBatch of ``sample``, as fresh as ``token``, answers every number
    right: the opted-out ones revoked, the others allowed."""
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    noon = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
    noon += timedelta(days=1)  # a coming noon in Los Angeles: no quiet hours decide
    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ConsentServiceStub(channel)
        while True:
            batch = await stub.CanSendBatch(
                api_pb2.CanSendBatchRequest(
                    brand=BRAND, campaign=CAMPAIGN, phones=sample, at=_ts(noon),
                    at_least_as_fresh=token,
                ),
                metadata=METADATA,
                timeout=60,
            )  # fmt: skip
            wrong = [
                d
                for d in batch.decisions
                if d.reason
                != (api_pb2.REASON_REVOKED if d.phone in revoked else api_pb2.REASON_CONSENT_ACTIVE)
            ]
            if not wrong:
                return
            if any(d.reason != api_pb2.REASON_NOT_CONSISTENT for d in wrong):
                first = wrong[0]
                raise AssertionError(
                    f"CanSend after the import answered {api_pb2.Reason.Name(first.reason)} "
                    f"for {first.phone}: {first.detail}"
                )
            await asyncio.sleep(0.05)


@dataclass
class ImportRow:
    path: str
    records: int
    appended_s: float
    e2e_s: float
    again_s: float
    raw_s: float = float("nan")
    raw_cpu_s: float = float("nan")
    service_cpu_s: float = float("nan")
    """The service's CPU seconds, and the projector process's with ``--projector separate``."""
    projector_cpu_s: float = float("nan")
    """Of ``service_cpu_s``, the projector process's; NaN when it runs in the service."""

    def rate(self, seconds: float) -> float:
        return self.records / seconds if seconds > 0 else float("nan")

    def line(self) -> str:
        raw = self.rate(self.raw_s)
        ratio = f"{self.rate(self.appended_s) / raw:.1%}" if raw == raw else ""
        e2e_ratio = f"{self.rate(self.e2e_s) / raw:.1%}" if raw == raw else ""
        raw_text = f"{raw:,.0f}" if raw == raw else ""
        return (
            f"| {self.path} | {self.records:,} | {raw_text} | {self.rate(self.appended_s):,.0f} "
            f"| {ratio} | {self.rate(self.e2e_s):,.0f} | {e2e_ratio} | {self.e2e_s:.1f} "
            f"| {self.rate(self.again_s):,.0f} | {self.service_cpu_s / self.records * 1e6:,.0f} |"
        )


HEADER = (
    "| ledger | records | raw aiokafka records/s | import appended records/s | appended / raw "
    "| import end to end records/s | end to end / raw | end to end s | re-run records/s "
    "| service CPU µs/record |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def goal_lines(rows: list[ImportRow]) -> list[str]:
    out = []
    for row in rows:
        rate = row.rate(row.e2e_s)
        million = 1_000_000 / rate if rate > 0 else float("inf")
        met = "met" if rate >= GOAL else "NOT met"
        out.append(
            f"goal import ({row.path}): >= {GOAL:,.0f} records/s end to end: {met} "
            f"({rate:,.0f}/s; a million at this rate: {million:,.0f} s)"
        )
    return out


async def run_imports(args: argparse.Namespace, infra: Infra, say: Say) -> list[ImportRow]:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    phones = make_phones(args.import_records)
    recs = records(phones, at)
    messages = chunks(recs)
    revoked = {p for i, p in enumerate(phones) if i % OPT_OUT_EVERY == OPT_OUT_EVERY - 1}
    step = max(1, len(phones) // SAMPLE)
    sample = phones[::step][:SAMPLE]
    if phones[-1] not in sample:
        sample[-1] = phones[-1]  # the last number imported is among those asked
    tag = uuid.uuid4().hex[:8]
    rows: list[ImportRow] = []
    say(
        f"\n== import: {len(recs):,} records ({len(phones):,} opt-ins with proof, "
        f"{len(recs) - len(phones):,} opt-outs) in {len(messages):,} messages of {CHUNK:,}"
    )
    for path in args.import_paths.split(","):
        raw_s = raw_cpu = float("nan")
        if path == "kafka":
            raw_prefix = f"{infra.prefix}iraw-{tag}."
            await _raw_topics(infra.bootstrap, raw_prefix)
            encoded = ledger_records(recs, raw_prefix, at)
            raw_s, raw_cpu = await asyncio.to_thread(run_producer, infra.bootstrap, encoded)
            say(
                f"  raw aiokafka, {len(encoded):,} records: {raw_s:.2f} s, "
                f"{len(encoded) / raw_s:,.0f} records/s (producer CPU {raw_cpu:.1f} s)"
            )
        dsn = await infra.fresh_database()
        svc_args = [
            "--dsn", dsn, "--kafka", infra.bootstrap, "--prefix", f"{infra.prefix}i{path}-{tag}.",
            "--partitions", str(PARTITIONS), "--tokens", str(infra.tokens_file()),
            "--ledger", path,
        ]  # fmt: skip
        with service(svc_args, args.projector) as (svc, proj_pids):
            pids = [p.pid for p in svc.procs] + proj_pids
            await check_service(svc.address, at)
            say(f"  service ({path} ledger) ready in {svc.start_seconds:.1f} s")
            before = cpu_seconds(pids)
            before_proj = sum(cpu_seconds(proj_pids).values())
            started = time.perf_counter()
            first = await import_all(svc.address, messages)
            if first.imported != len(recs) or first.refused:
                raise AssertionError(
                    f"imported {first.imported} of {len(recs)}, refused {first.refused}: "
                    f"{first.first_refusal}"
                )
            await answerable(svc.address, sample, revoked, first.token)
            e2e = time.perf_counter() - started
            used = sum(cpu_seconds(pids).values()) - sum(before.values())
            projector_used = (
                sum(cpu_seconds(proj_pids).values()) - before_proj if proj_pids else float("nan")
            )
            say(
                f"  import ({path}): appended in {first.seconds:.2f} s "
                f"({len(recs) / first.seconds:,.0f} records/s); answerable by CanSend after "
                f"{e2e:.2f} s ({len(recs) / e2e:,.0f} records/s end to end); service CPU "
                f"{used:.1f} s"
                + (f" (of it the projector process {projector_used:.1f} s)" if proj_pids else "")
            )
            again = await import_all(svc.address, messages)
            if again.imported or again.present != len(recs):
                raise AssertionError(
                    f"the same import again wrote {again.imported}, found {again.present}"
                )
            say(
                f"  the same import again: {again.seconds:.2f} s, nothing written "
                f"({again.present:,} already present)"
            )
            rows.append(
                ImportRow(
                    path, len(recs), first.seconds, e2e, again.seconds, raw_s, raw_cpu, used,
                    projector_used,
                )
            )  # fmt: skip
    return rows


def row_figures(rows: list[ImportRow]) -> list[dict[str, Any]]:
    return [
        {
            "ledger": r.path,
            "records": r.records,
            "raw_aiokafka_s": r.raw_s,
            "appended_s": r.appended_s,
            "end_to_end_s": r.e2e_s,
            "again_s": r.again_s,
            "service_cpu_s": r.service_cpu_s,
            "projector_process_cpu_s": r.projector_cpu_s,
            "raw_producer_cpu_s": r.raw_cpu_s,
        }
        for r in rows
    ]
