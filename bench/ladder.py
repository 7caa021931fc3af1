"""``python -m bench --ladder``: where a unary CanSend's cost over echo goes.

Four servers answer the same CanSend requests from the same client, one uvloop
process each, all started at once and measured in turn, the order reversed each
round so that no rung always runs first:

1. **echo**: the baseline of ``make bench`` (raw bytes in and out, no work);
2. **stub**: the service's own gRPC server (``GrpcServer``: typed handlers, health,
   reflection) whose CanSend returns the echo's response as a message, no check;
3. **stub + auth**: the same, after authenticating the caller's token as the
   service does;
4. **service**: the real service, as ``make bench`` runs it (Kafka, PostgreSQL, the
   digest replica of every seeded subscriber).

Each rung's median QPS and server CPU per call over the rounds say what each layer
adds: the step from one rung to the next is what that layer costs on this machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench import client
from bench.infra import Infra, ServerGroup
from bench.server import ECHO_UNARY

RUNGS = ("echo", "stub", "stub + auth", "service")
CANSEND = "/consent.v1.ConsentService/CanSend"


def run_ladder(
    infra: Infra,
    consent_args: list[str],
    unary: list[bytes],
    load: Callable[[str, str, list[bytes], int], client.Load],
    measure: Callable[..., tuple[client.Result, float, float, float]],
    say: Callable[[str], None],
    rounds: int,
) -> list[dict[str, object]]:
    groups = {
        "echo": ServerGroup("echo", "uvloop", 1, []),
        "stub": ServerGroup("stub", "uvloop", 1, []),
        "stub + auth": ServerGroup("stub", "uvloop", 1, ["--tokens", str(infra.tokens_file())]),
        "service": ServerGroup("consent", "uvloop", 1, [*consent_args, "--reads", "replica"]),
    }
    seen: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        for group in groups.values():
            group.start()
        for r in range(rounds):
            order = RUNGS if r % 2 == 0 else RUNGS[::-1]
            say(f"\n== round {r + 1} of {rounds}")
            for conc in (1, 32):
                for rung in order:
                    group = groups[rung]
                    method = ECHO_UNARY if rung == "echo" else CANSEND
                    result, cpu, _, _ = measure(
                        load(group.address, method, unary, conc), rung, group
                    )
                    seen.setdefault((conc, rung), []).append((result.qps, cpu))
    finally:
        for group in groups.values():
            group.stop()

    say(
        f"\nMedians of {rounds} rounds; each step is what that layer adds.\n\n"
        "| conc. | server | QPS | / echo | server CPU µs/call | step µs/call |\n"
        "|---:|---|---:|---:|---:|---:|"
    )
    rows: list[dict[str, object]] = []
    for conc in (1, 32):
        echo_qps = statistics.median(q for q, _ in seen[conc, "echo"])
        before = float("nan")
        for rung in RUNGS:
            qps = statistics.median(q for q, _ in seen[conc, rung])
            cpu = statistics.median(c for _, c in seen[conc, rung])
            step = "" if rung == "echo" else f"{cpu - before:+,.0f}"
            say(f"| {conc} | {rung} | {qps:,.0f} | {qps / echo_qps:.1%} | {cpu:,.0f} | {step} |")
            rows.append(
                {"concurrency": conc, "server": rung, "qps": qps, "cpu_us_per_call": cpu,
                 "of_echo": qps / echo_qps, "rounds": seen[conc, rung]}
            )  # fmt: skip
            before = cpu
    return rows
