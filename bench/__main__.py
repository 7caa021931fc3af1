"""``make bench``: CanSend and CanSendBatch measured beside a bare gRPC echo baseline,
then the writes beside echo and a raw aiokafka producer.

    python -m bench [--subscribers N] [--duration S] [--quick] [--profile]
                    [--writes-only | --no-writes | --projection-only]
                    [--write-paths kafka,postgres] [--projection-events N | --no-projection]
                    [--import-only | --no-import] [--import-records N]

1. Start Kafka and PostgreSQL (``tests.infra``), or reuse the ones named by
   ``CONSENT_TEST_KAFKA_BOOTSTRAP`` / ``CONSENT_TEST_POSTGRES_DSN``.
2. Seed N subscribers through ``PostgresConsentView.apply`` (see ``bench.seed``),
   then check a sample of phones: the view's state equals the fold of their events.
3. For each server configuration (one process on asyncio, one on uvloop, several
   uvloop processes sharing the port with so_reuseport), run the echo baseline, then
   the real service (Kafka ledger, PostgreSQL view, freshness guard), with the same
   client harness: unary at concurrency 1 and 32, and 1,000-number batches.
4. Print every figure beside the baseline of the same configuration, as a ratio.
5. The write phases (``bench.writes``): RecordOptIn, RecordOptOut and
   RecordMessageSent at 64 in flight, and RecordMessagesSent (1,000 messages a
   call, 8 in flight), on the Kafka ledger and on the embedded default, each
   beside echo and (on Kafka) a raw aiokafka producer with the same records.
   ``--write-phases RecordMessagesSent`` runs the batched phase alone.
   ``--writes-only`` runs these alone, with no seeding.
6. The projection phase (``bench.projection``): events a second one projector
   process applies into PostgreSQL, beside a raw COPY of the same rows into a bare
   table, and the time a rebuild from Kafka takes. ``--projection-only`` runs it
   alone; ``--no-projection`` leaves it out.
7. The import phase (``bench.imports``): ``ImportConsents`` of 200,000 opt-ins with
   proof and 20,000 opt-outs, appended and then answerable by CanSend, beside a raw
   aiokafka producer appending the same records. ``--import-only`` runs it alone.

``--profile`` instead runs the service in one uvloop process under cProfile through
the CanSend phases (with ``--writes-only``, the write phases) and prints where the
time goes; ``--ladder`` measures unary
CanSend on four servers, from echo to the service, to say which layer costs what
(``bench.ladder``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from bench import client
from bench.cpu import WindowMeter, postgres_pids, rss_bytes
from bench.imports import HEADER as IMPORT_HEADER
from bench.imports import ImportRow, run_imports
from bench.imports import goal_lines as import_goal_lines
from bench.imports import row_figures as import_row_figures
from bench.infra import CHECK_TOKEN, REPO_ROOT, Infra, ServerGroup
from bench.ladder import run_ladder
from bench.phones import phones as make_phones
from bench.projection import projection_lines, run_projection
from bench.seed import (
    BRAND,
    CAMPAIGN,
    REVOKE_EVERY,
    Plan,
    fill_ledger,
    recorded_for,
    reference_time,
    seed,
)
from bench.server import ECHO_BATCH, ECHO_UNARY, kafka_settings
from bench.writes import HEADER as WRITE_HEADER
from bench.writes import WriteRow, goal_lines, row_figures, run_writes

CANSEND = "/consent.v1.ConsentService/CanSend"
CANSEND_BATCH = "/consent.v1.ConsentService/CanSendBatch"
METADATA = (("authorization", f"Bearer {CHECK_TOKEN}"),)
BATCH = 1000
PARTITIONS = 12


@dataclass(frozen=True)
class Config:
    name: str
    loop: str
    processes: int


@dataclass
class Row:
    config: str
    phase: str
    concurrency: int
    base: client.Result
    svc: client.Result
    per_call: int = 1
    base_cpu: float = float("nan")
    """Server CPU microseconds per echo call."""
    svc_cpu: float = float("nan")
    """Server CPU microseconds per service call."""
    pg_cpu: float = float("nan")
    """PostgreSQL CPU microseconds per service call."""
    base_rss: float = float("nan")
    """Resident memory of the echo server processes after their phases, MB."""
    svc_rss: float = float("nan")
    """Resident memory of the service processes after their phases, MB."""
    base_busy: float = float("nan")
    """Share of the machine's CPU in use during the echo phase's timed window."""
    svc_busy: float = float("nan")

    def line(self) -> str:
        ratio = self.svc.qps / self.base.qps if self.base.qps else float("nan")
        checks = f"{self.svc.qps * self.per_call:,.0f}" if self.per_call > 1 else ""
        return (
            f"| {self.config} | {self.phase} | {self.concurrency} "
            f"| {self.base.qps:,.0f} | {ms(self.base.percentile(0.5))} "
            f"| {ms(self.base.percentile(0.99))} "
            f"| {self.svc.qps:,.0f} | {ms(self.svc.percentile(0.5))} "
            f"| {ms(self.svc.percentile(0.99))} | {checks} | {ratio:.1%} "
            f"| {self.base_cpu:,.0f} | {self.svc_cpu:,.0f} | {self.pg_cpu:,.0f} "
            f"| {self.base_rss:,.0f} | {self.svc_rss:,.0f} "
            f"| {self.base_busy:.0%} | {self.svc_busy:.0%} |"
        )


HEADER = (
    "| server | phase | conc. | echo QPS | echo p50 ms | echo p99 ms "
    "| service QPS | p50 ms | p99 ms | checks/s | service / echo "
    "| echo CPU µs/call | service CPU µs/call | PostgreSQL CPU µs/call "
    "| echo RSS MB | service RSS MB | machine busy, echo | machine busy, service |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def machine() -> dict[str, str]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grpc as _grpc
    import uvloop

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "grpcio": _grpc.__version__,
        "uvloop": str(getattr(uvloop, "__version__", "?")),
        "kernel": platform.release(),
    }


def _ts(value: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


def build_requests(
    phones: list[str], at: datetime, rng: random.Random
) -> tuple[list[bytes], list[bytes]]:
    """Pre-serialized requests over random seeded phones: unary and 1,000-number batches."""
    stamp = _ts(at)
    unary = [
        api_pb2.CanSendRequest(
            phone=p, brand=BRAND, campaign=CAMPAIGN, at=stamp
        ).SerializeToString()
        for p in rng.sample(phones, min(20_000, len(phones)))
    ]
    batches = [
        api_pb2.CanSendBatchRequest(
            brand=BRAND, campaign=CAMPAIGN, phones=rng.sample(phones, BATCH), at=stamp
        ).SerializeToString()
        for _ in range(40)
    ]
    return unary, batches


async def verify_view(dsn: str, plan: Plan, rng: random.Random) -> int:
    """The view's state and digest of sampled phones are the fold of their events
    and its digest."""
    import asyncpg

    from ledger.digest import digest_of
    from ledger.events import Recorded
    from ledger.state import SubscriberState, fold
    from services.adapters.postgres_view import PostgresConsentView

    by_phone: dict[str, list[Recorded]] = {}
    for r in recorded_for(Plan(min(plan.count, 50_000), plan.partitions, plan.at)):
        by_phone.setdefault(r.event.phone, []).append(r)  # type: ignore[attr-defined]
    sample = rng.sample(sorted(by_phone), min(300, len(by_phone)))
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        view = PostgresConsentView(pool)
        states = await view.subscriber_states(BRAND, sample)
        digests = await view.digests(BRAND, sample)
    finally:
        await pool.close()
    for phone in sample:
        expected = fold(by_phone[phone], SubscriberState(phone=phone, brand=BRAND))
        if states[phone] != expected:
            raise AssertionError(f"the view's state of {phone} is not the fold of its events")
        if digests.get(phone) != digest_of(expected):
            raise AssertionError(f"the view's digest of {phone} is not its state's digest")
    return len(sample)


async def verify_answers(address: str, phones: list[str], at: datetime) -> dict[str, int]:
    """Ask about sampled phones through gRPC; every tenth phone opted out, the rest may
    be sent to. Returns the count of each reason; raises on a wrong answer."""
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    reasons: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ConsentServiceStub(channel)
        for i in range(0, len(phones), max(1, len(phones) // 200)):
            r = await stub.CanSend(
                api_pb2.CanSendRequest(phone=phones[i], brand=BRAND, campaign=CAMPAIGN, at=_ts(at)),
                metadata=METADATA,
                timeout=10,
            )
            name = api_pb2.Reason.Name(r.reason)
            reasons[name] = reasons.get(name, 0) + 1
            revoked = i % REVOKE_EVERY == REVOKE_EVERY - 1
            if r.allowed == revoked:
                raise AssertionError(f"CanSend({phones[i]}) answered {name}, revoked={revoked}")
        batch = await stub.CanSendBatch(
            api_pb2.CanSendBatchRequest(
                brand=BRAND, campaign=CAMPAIGN, phones=phones[:BATCH], at=_ts(at)
            ),
            metadata=METADATA,
            timeout=30,
        )
        for i, d in enumerate(batch.decisions):
            if d.allowed == (i % REVOKE_EVERY == REVOKE_EVERY - 1):
                raise AssertionError(f"CanSendBatch answered wrongly for {phones[i]}")
    return reasons


def say(text: str) -> None:
    print(text, flush=True)


def measure(
    load: client.Load, label: str, servers: ServerGroup | None = None
) -> tuple[client.Result, float, float, float]:
    """Run ``load``; also the CPU microseconds per call that the ``servers`` and
    PostgreSQL spent in the timed window, and how busy the whole machine was then."""
    pids = [p.pid for p in servers.procs] if servers is not None else []
    begin = time.monotonic() + client.START_DELAY + load.warmup
    meter = WindowMeter(
        begin, begin + load.duration, {"server": lambda: pids, "postgres": postgres_pids}
    )
    meter.start()
    result = client.run(load)
    meter.join()
    calls = result.calls
    server_cpu = meter.cpu["server"] / calls * 1e6 if calls else float("nan")
    pg_cpu = meter.cpu["postgres"] / calls * 1e6 if calls else float("nan")
    note = f", {result.errors} errors ({result.first_error})" if result.errors else ""
    say(
        f"  {label:<34} c={load.concurrency:<3} {result.qps:>9,.0f}/s  "
        f"p50 {ms(result.percentile(0.5))} ms  p99 {ms(result.percentile(0.99))} ms  "
        f"CPU/call: server {server_cpu:,.0f} µs, PostgreSQL {pg_cpu:,.0f} µs; "
        f"machine {meter.busy:.0%} busy{note}"
    )
    if result.errors:
        raise RuntimeError(f"{label}: {result.errors} calls failed: {result.first_error}")
    return result, server_cpu, pg_cpu, meter.busy


async def main_async(args: argparse.Namespace) -> int:
    info = machine()
    say(f"consent-ledger bench, {info['date']}")
    say("machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "date"))
    rng = random.Random(20240601)
    infra = Infra()
    t0 = time.perf_counter()
    try:
        await infra.start()
        say(f"infrastructure up in {time.perf_counter() - t0:.1f} s: " + "; ".join(infra.notes))
        if args.projection_only:
            alone = await run_projection(args, infra, say)
            say("")
            for line in projection_lines(alone):
                say(line)
            save({"machine": info, "args": vars(args), "projection": alone.as_dict()})
            return 0
        if args.import_only:
            import_rows = await run_imports(args, infra, say)
            print_imports(import_rows)
            save({"machine": info, "args": vars(args), "imports": import_row_figures(import_rows)})
            return 0
        if args.writes_only:
            if args.profile:
                return await profile_writes(args, infra)
            write_rows = await run_writes(args, infra, say)
            print_writes(write_rows)
            save({"machine": info, "args": vars(args), "writes": row_figures(write_rows)})
            return 0
        at = reference_time()
        plan = Plan(args.subscribers, PARTITIONS, at)
        say(f"seeding {plan.count:,} subscribers through PostgresConsentView.apply ...")
        seeded = await seed(infra.dsn, plan, workers=args.seed_workers)
        say(
            f"  seeded {seeded.subscribers:,} subscribers ({seeded.events:,} events) in "
            f"{seeded.seconds:.1f} s with {seeded.workers} processes: "
            f"{seeded.subscribers / seeded.seconds:,.0f} subscribers/s; "
            f"then VACUUM (ANALYZE) in {seeded.vacuum_seconds:.1f} s"
        )
        checked = await verify_view(infra.dsn, plan, rng)
        say(f"  view == fold of the events (state and digest) for {checked} sampled phones")
        settings = kafka_settings(infra.bootstrap, infra.prefix, PARTITIONS)
        filled = await fill_ledger(settings, infra.dsn, plan)
        say(f"  the same events appended to Kafka in {filled:.1f} s; its ends are the view's")
        phones = make_phones(plan.count)
        unary, batches = build_requests(phones, at, rng)
        consent_args = [
            "--dsn", infra.dsn, "--kafka", infra.bootstrap, "--prefix", infra.prefix,
            "--partitions", str(PARTITIONS), "--tokens", str(infra.tokens_file()),
        ]  # fmt: skip
        if args.profile:
            return profile(args, consent_args, unary, batches, phones, at)
        if args.ladder:
            return ladder(args, infra, consent_args, unary, info)

        configs = {
            "asyncio": Config("1 process, asyncio", "asyncio", 1),
            "uvloop": Config("1 process, uvloop", "uvloop", 1),
            "reuseport": Config(
                f"{args.server_procs} processes, uvloop, so_reuseport",
                "uvloop",
                args.server_procs,
            ),
        }
        rows: list[Row] = []
        idle_rows: list[dict[str, object]] = []
        for config in (configs[name] for name in args.configs.split(",")):
            say(f"\n== {config.name}")

            load = loader(args)
            phases = [
                ("CanSend", 1, ECHO_UNARY, CANSEND, unary, 1),
                ("CanSend", 32, ECHO_UNARY, CANSEND, unary, 1),
                (f"CanSendBatch x{BATCH}", args.batch_concurrency, ECHO_BATCH, CANSEND_BATCH,
                 batches, BATCH),
            ]  # fmt: skip
            base: dict[int, tuple[client.Result, float, float, float]] = {}
            with ServerGroup("echo", config.loop, config.processes, []) as echo:
                echo_idle = await idle_cpu(
                    {"echo": [p.pid for p in echo.procs], **infra_pids(infra)}, args.idle
                )
                say("  " + idle_line(echo_idle, args.idle))
                for i, (phase, conc, echo_method, _, reqs, _) in enumerate(phases):
                    base[i] = measure(
                        load(echo.address, echo_method, reqs, conc), f"echo {phase}", echo
                    )
                echo_rss = rss_bytes(p.pid for p in echo.procs) / 2**20
            with ServerGroup("consent", config.loop, config.processes, consent_args) as svc:
                say(
                    f"  service ready in {svc.start_seconds:.1f} s, "
                    f"RSS {rss_bytes(p.pid for p in svc.procs) / 2**20:,.0f} MB"
                )
                # Let the projectors' consumer group settle before anything is timed.
                await asyncio.sleep(args.settle)
                svc_idle = await idle_cpu(
                    {"service": [p.pid for p in svc.procs], **infra_pids(infra)}, args.idle
                )
                say("  " + idle_line(svc_idle, args.idle))
                idle_rows.append({"config": config.name, "echo": echo_idle, "service": svc_idle})
                reasons = await verify_answers(svc.address, phones, at)
                say(f"  answers checked: {reasons}")
                for i, (phase, conc, _, method, reqs, per_call) in enumerate(phases):
                    result, svc_cpu, pg_cpu, svc_busy = measure(
                        load(svc.address, method, reqs, conc), phase, svc
                    )
                    echo_result, echo_cpu, _, echo_busy = base[i]
                    rows.append(
                        Row(config.name, phase, conc, echo_result, result, per_call,
                            echo_cpu, svc_cpu, pg_cpu,
                            base_busy=echo_busy, svc_busy=svc_busy)
                    )  # fmt: skip
                    if per_call > 1:
                        say(f"  {'':<34} {result.qps * per_call:>15,.0f} checks/s")
                svc_rss = rss_bytes(p.pid for p in svc.procs) / 2**20
                say(f"  RSS after the phases: echo {echo_rss:,.0f} MB, service {svc_rss:,.0f} MB")
                for row in rows[-len(phases) :]:
                    row.base_rss, row.svc_rss = echo_rss, svc_rss

        write_rows = [] if args.no_writes else await run_writes(args, infra, say)
        projection = None if args.no_projection else await run_projection(args, infra, say)
        import_rows = [] if args.no_import else await run_imports(args, infra, say)
        say("\n" + HEADER)
        for row in rows:
            say(row.line())
        say("")
        goals(rows)
        if write_rows:
            print_writes(write_rows)
        if projection is not None:
            say("")
            for line in projection_lines(projection):
                say(line)
        if import_rows:
            print_imports(import_rows)
        figures = report(info, seeded, rows, args)
        figures["projection"] = None if projection is None else projection.as_dict()
        figures["idle_cpu_share_of_a_core"] = idle_rows
        figures["writes"] = row_figures(write_rows)
        figures["imports"] = import_row_figures(import_rows)
        save(figures)
        return 0
    finally:
        await infra.stop()


def print_writes(rows: list[WriteRow]) -> None:
    say("\n" + WRITE_HEADER)
    for row in rows:
        say(row.line())
    say("")
    for line in goal_lines(rows):
        say(line)


def print_imports(rows: list[ImportRow]) -> None:
    say("\n" + IMPORT_HEADER)
    for row in rows:
        say(row.line())
    say("")
    for line in import_goal_lines(rows):
        say(line)


def save(figures: dict[str, object]) -> None:
    out = REPO_ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(figures, indent=2))
    say(f"figures written to {path.relative_to(REPO_ROOT)}")


async def profile_writes(args: argparse.Namespace, infra: Infra) -> int:
    """The write phases with the service under cProfile; where each path's time goes."""
    prefix = REPO_ROOT / "var" / "bench" / "writes"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    await run_writes(args, infra, say, profile=str(prefix))
    for path in args.write_paths.split(","):
        target = f"{prefix}.{path}.prof.0"
        p = pstats.Stats(target)
        say(f"\n-- {path}: top functions by own time ({target})")
        p.sort_stats("tottime").print_stats(30)
        say(f"-- {path}: top functions by cumulative time")
        p.sort_stats("cumulative").print_stats(50)
    return 0


def loader(args: argparse.Namespace) -> Callable[[str, str, list[bytes], int], client.Load]:
    """The client's load for one phase: ``args``' duration and warm-up, one client
    process at concurrency 1, else ``--client-procs``."""

    def load(address: str, method: str, reqs: list[bytes], conc: int) -> client.Load:
        return client.Load(
            address, method, reqs, METADATA, conc, args.duration,
            warmup=args.warmup, processes=1 if conc == 1 else args.client_procs,
        )  # fmt: skip

    return load


def ladder(
    args: argparse.Namespace,
    infra: Infra,
    consent_args: list[str],
    unary: list[bytes],
    info: dict[str, str],
) -> int:
    rows = run_ladder(infra, consent_args, unary, loader(args), measure, say, args.rounds)
    out = REPO_ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ladder-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "subscribers": args.subscribers, "rows": rows}))
    say(f"figures written to {path.relative_to(REPO_ROOT)}")
    return 0


def infra_pids(infra: Infra) -> dict[str, list[int]]:
    """The PostgreSQL processes, and the Kafka broker's if the bench started it."""
    found = {"PostgreSQL": postgres_pids()}
    broker = infra.kafka.pid if infra.kafka is not None else None
    if broker is not None:
        found["Kafka"] = [broker]
    return found


async def idle_cpu(groups: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """The share of one core each group of processes used over ``seconds`` with no
    calls: what the servers (and the infrastructure they poll) cost in the
    background, which every call of a phase then shares."""
    begin = time.monotonic()
    meter = WindowMeter(begin, begin + seconds, {name: pids.copy for name, pids in groups.items()})
    meter.start()
    await asyncio.to_thread(meter.join)
    return {name: cpu / meter.seconds for name, cpu in meter.cpu.items()}


def idle_line(shares: dict[str, float], seconds: float) -> str:
    parts = ", ".join(f"{name} {share:.1%}" for name, share in shares.items())
    return f"idle for {seconds:.0f} s, CPU as a share of one core: {parts}"


def goals(every: list[Row]) -> None:
    # Unary CanSend has no goal of its own (BENCHMARKS.md, "The goals"): its ratio
    # is compared with the latest run.
    rows = every
    unary = [r for r in rows if r.per_call == 1]
    ratios = sorted((r.svc.qps / r.base.qps, r) for r in unary if r.base.qps)
    worst, best = ratios[0], ratios[-1]
    say(
        f"CanSend / echo: {worst[0]:.1%} to {best[0]:.1%} over {len(ratios)} rows; best "
        f"{best[1].config}, c={best[1].concurrency}, "
        f"{best[1].svc.qps:,.0f} vs {best[1].base.qps:,.0f} calls/s"
    )
    batch = max((r for r in rows if r.per_call > 1), key=lambda r: r.svc.qps)
    checks = batch.svc.qps * batch.per_call
    one = [r for r in rows if r.per_call > 1 and r.config.startswith("1 process")]
    best_one = max(r.svc.qps * r.per_call for r in one) if one else 0.0
    met = "met" if best_one > 200_000 else "NOT met"
    say(
        f"goal CanSendBatch > 200,000 checks/s in one process: {met} (best one-process "
        f"{best_one:,.0f}/s; best overall {checks:,.0f}/s with {batch.config})"
    )


def report(
    info: dict[str, str], seeded: object, rows: list[Row], args: argparse.Namespace
) -> dict[str, object]:
    def res(r: client.Result, per_call: int) -> dict[str, float]:
        return {
            "calls_per_s": r.qps,
            "checks_per_s": r.qps * per_call,
            "p50_ms": r.percentile(0.5) * 1000,
            "p99_ms": r.percentile(0.99) * 1000,
            "calls": r.calls,
        }

    return {
        "machine": info,
        "args": vars(args),
        "seed": vars(seeded),
        "rows": [
            {
                "config": r.config,
                "phase": r.phase,
                "concurrency": r.concurrency,
                "echo": res(r.base, r.per_call),
                "service": res(r.svc, r.per_call),
                "ratio": r.svc.qps / r.base.qps if r.base.qps else None,
                "cpu_us_per_call": {
                    "echo_server": r.base_cpu,
                    "service_server": r.svc_cpu,
                    "postgres": r.pg_cpu,
                },
                "rss_mb": {"echo_server": r.base_rss, "service_server": r.svc_rss},
                "machine_busy": {"echo": r.base_busy, "service": r.svc_busy},
            }
            for r in rows
        ],
    }


def profile(
    args: argparse.Namespace,
    consent_args: list[str],
    unary: list[bytes],
    batches: list[bytes],
    phones: list[str],
    at: datetime,
) -> int:
    stats = Path(REPO_ROOT / "var" / "bench" / "cansend.prof")
    stats.parent.mkdir(parents=True, exist_ok=True)
    for phase, method, reqs, conc in (
        ("CanSend", CANSEND, unary, 32),
        (f"CanSendBatch x{BATCH}", CANSEND_BATCH, batches, args.batch_concurrency),
    ):
        target = stats.with_suffix(f".{method.rsplit('/', 1)[1]}.prof")
        group = ServerGroup("consent", "uvloop", 1, [*consent_args, "--profile", str(target)])
        with group:
            say(f"\n== profiling {phase} in one uvloop process (cProfile slows it down)")
            measure(
                client.Load(group.address, method, reqs, METADATA, conc, args.duration,
                            warmup=args.warmup, processes=args.client_procs),
                phase,
                group,
            )  # fmt: skip
        p = pstats.Stats(f"{target}.0")
        say(f"-- top functions by own time ({target}.0)")
        p.sort_stats("tottime").print_stats(25)
        say("-- top functions by cumulative time")
        p.sort_stats("cumulative").print_stats(40)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each phase")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 20,000 subscribers, 2 s phases"
    )
    parser.add_argument("--server-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--seed-workers", type=int, default=2)
    parser.add_argument(
        "--configs",
        default="asyncio,uvloop,reuseport",
        help="server configurations to run, comma-separated (default: all three)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to wait after the service starts, before measuring",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="seconds over which the servers' CPU use with no calls is read, per configuration",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the service under cProfile instead of benchmarking",
    )
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="measure unary CanSend on echo, a stub of the API, the stub with "
        "authentication and the service, to see which layer costs what (bench.ladder)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the --ladder")
    writes = parser.add_mutually_exclusive_group()
    writes.add_argument(
        "--writes-only", action="store_true", help="run the write phases alone (no seeding)"
    )
    writes.add_argument("--no-writes", action="store_true", help="skip the write phases")
    writes.add_argument(
        "--projection-only",
        action="store_true",
        help="run the projection phase alone: apply rate beside a raw COPY, and a rebuild",
    )
    parser.add_argument(
        "--projection-events",
        type=int,
        default=1_000_000,
        help="events the projection phase applies and rebuilds (default 1,000,000)",
    )
    parser.add_argument(
        "--rebuild-workers",
        type=int,
        default=2,
        help="the projection phase also runs `consent-ledger rebuild --workers N` "
        "of the same events (default 2; 1 leaves it out)",
    )
    parser.add_argument("--no-projection", action="store_true", help="skip the projection phase")
    writes.add_argument(
        "--import-only",
        action="store_true",
        help="run the import phase alone (bench.imports; no seeding, no write phases)",
    )
    parser.add_argument("--no-import", action="store_true", help="skip the import phase")
    parser.add_argument(
        "--import-records",
        type=int,
        default=200_000,
        help="opt-ins the import phase imports (and a tenth as many opt-outs); 200,000",
    )
    parser.add_argument(
        "--import-paths",
        default="kafka,postgres",
        help="ledgers the import phase runs on, comma-separated: kafka, postgres",
    )
    parser.add_argument(
        "--write-paths",
        default="kafka,postgres",
        help="ledgers the write phases run on, comma-separated: kafka (the Kafka ledger), "
        "postgres (the embedded default's PostgreSQL table)",
    )
    parser.add_argument(
        "--write-phases",
        default="RecordOptIn,RecordOptOut,RecordMessageSent,RecordMessagesSent",
        help="write phases to run, comma-separated (RecordMessagesSent: 1,000 messages a "
        "call, 8 calls in flight, its rates in messages a second)",
    )
    parser.add_argument(
        "--write-phones", type=int, default=20_000, help="phones the write phases cycle through"
    )
    parser.add_argument(
        "--projector",
        choices=["in-process", "separate"],
        default="in-process",
        help="where the write and import phases' projector runs: in the service process "
        "(the default, as `serve`), or a `project` process beside a service started with "
        "CONSENT_PROJECTOR=off; the service's CPU figures then include the projector's",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick:
        args.projection_events = min(args.projection_events, 20_000)
        args.subscribers = min(args.subscribers, 20_000)
        args.duration = min(args.duration, 2.0)
        args.warmup = min(args.warmup, 1.0)
    if args.subscribers < 1100:
        parser.error("--subscribers must be at least 1100 (a batch samples 1,000 of them)")
    if args.rebuild_workers < 1:
        parser.error("--rebuild-workers must be 1 or more")
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:  # Ctrl-C: what the bench started is stopped by now
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
