"""The tamper-evidence commands: ``export``, ``verify`` and ``keys``.

``services.cli.main`` adds them to its parser (``add_commands``) and hands them their
arguments (``run``); they need no tokens file and start no service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger.ports import CheckpointStore, RecordSource
from services.checkpoints import STREAMS, Keyring, PublicKey, SigningKey
from services.cli.manual import Manual, tool
from services.progress import Progress, ProgressLine, ResumeState, StopAfter, wanted

COMMANDS = ("export", "verify", "keys")
VERIFY_STATE = "consent-ledger-verify.resume"
"""Where ``verify`` of the live ledger keeps its resume state, in the current folder."""

EXPORT_DESCRIPTION = """\
Write the ledger's records as JSON Lines, exactly as stored: each record's bytes
(base64), its stream, partition and offset, and the time the ledger recorded it,
with the signed checkpoints that cover them, so that `consent-ledger verify` can
check the file anywhere, later, with the public keys alone.

The ledger is the one the service's settings name (CONSENT_LEDGER,
CONSENT_KAFKA_BOOTSTRAP, CONSENT_KAFKA_TOPIC_PREFIX, CONSENT_POSTGRES_DSN; with
--embedded, the embedded default's under CONSENT_DATA_DIR). It only reads.

A --from offset is moved back to where a checkpoint starts (a note says so), so
that the export begins on a signed head of the chain. The format is in
protos/README.md, "Tamper evidence"."""
EXPORT_EXAMPLES = """\
consent-ledger audit export --embedded --output ledger.jsonl
consent-ledger audit export --stream subscribers --partition 3 --from 1200 --to 1500"""
EXPORT_EXIT = """\
0  written
1  the ledger could not be read
2  a usage error
130  interrupted (Ctrl-C): run the same command again to carry on"""

VERIFY_DESCRIPTION = """\
Check the ledger's records against its signed checkpoints and say whether any
record was altered, removed, inserted or reordered, and where: stream, partition
and offset.

What it reads:
  the records   an export (--export FILE), or else the live ledger the service's
                settings name (as for `export`; --embedded for the embedded default)
  checkpoints   those in the export, any --checkpoints FILE (one checkpoint JSON a
                line), and, for the live ledger or with --live-checkpoints, the
                checkpoint topic (or the embedded default's table)
  public keys   --keys FILE, a keyring: {"keys": [{"key_id", "public_key", "status"}]}
                (`consent-ledger keys public` writes one)

What it reports, one line each, at stream/partition@offset:
  ALTERED       the record's bytes or recorded time differ from what was signed
  REMOVED       a signed record is missing
  INSERTED      a record no checkpoint lists stands among signed ones
  REORDERED     a signed record is there, out of its place
  RENUMBERED    a signed record says another offset than the one it was signed at
  FORKED        two trusted checkpoints disagree: the ledger was rewritten between them
  CHECKPOINT    a checkpoint not to be trusted: its signature does not hold, or its
                key is unknown, revoked, or was retired before the checkpoint's time
  UNPROVEN      records older than --grace that no trusted checkpoint covers (their
                checkpoints were removed, or never made)
Records newer than the last checkpoint are listed as not yet covered; they are no
finding until they are older than --grace."""
VERIFY_EXAMPLES = """\
consent-ledger audit verify --export ledger.jsonl --keys keys.json
consent-ledger audit verify --embedded --keys keys.json       # the live ledger
consent-ledger audit verify --export ledger.jsonl --keys keys.json --json | jq .ok"""
VERIFY_EXIT = """\
0  nothing found
1  a finding (each is printed)
2  a usage error, or a file that cannot be read
130  interrupted (Ctrl-C): run the same command again to carry on"""

KEYS_DESCRIPTION = """\
Manage the Ed25519 keys checkpoints are signed with.

  new FILE                  make a signing key (PEM, mode 0600; never overwrites)
                            and print its keyring entry
  public FILE               print a keyring holding FILE's public key; with
                            --keyring, add it to that keyring file instead
  retire KEY_ID --keyring K the key stops signing: checkpoints it signed up to
                            --at (default now) stay trusted, later ones are not
  revoke KEY_ID --keyring K the key was compromised: nothing it signed is trusted

Rotation: `keys new` a key, `keys public NEW --keyring keys.json`, point
CONSENT_CHECKPOINT_KEY_FILE at it and restart the service; once no process signs
with the old key, `keys retire OLD --keyring keys.json`. The service checkpoints
the whole ledger again with the new key (it resumes only from its own key's
checkpoints), so even a revoked old key leaves every record proven."""
KEYS_EXAMPLES = """\
consent-ledger audit keys new /secrets/checkpoint-2027.pem
consent-ledger audit keys public /secrets/checkpoint-2027.pem --keyring keys.json
consent-ledger audit keys retire ed25519:f5f9d657d96d45db --keyring keys.json \\
    --at 2027-01-01T00:00:00Z"""
KEYS_EXIT = """\
0  done
1  it could not be done (the message says why)"""


SUMMARIES = {
    "export": "write the ledger's records and checkpoints as JSON Lines",
    "verify": "check the ledger (or an export) against its signed checkpoints",
    "keys": "make, publish, retire and revoke checkpoint signing keys",
}
MANUALS = {
    name: Manual(SUMMARIES[name], description, examples, exit_status)
    for name, description, examples, exit_status in (
        ("export", EXPORT_DESCRIPTION, EXPORT_EXAMPLES, EXPORT_EXIT),
        ("verify", VERIFY_DESCRIPTION, VERIFY_EXAMPLES, VERIFY_EXIT),
        ("keys", KEYS_DESCRIPTION, KEYS_EXAMPLES, KEYS_EXIT),
    )
}


def add_commands(sub: Any, command: Any) -> None:
    """Add the commands to ``services.cli.main``'s subparsers; ``command(name, text)``
    makes one the way every other command is made."""
    for name in COMMANDS:
        parser: argparse.ArgumentParser = command(name, SUMMARIES[name])
        page = MANUALS[name]
        examples = textwrap.indent(
            page.examples.replace("consent-ledger audit ", "consent-ledger "), "  "
        )
        parser.description = (
            f"{page.summary}\n\n{page.description}\n\nexamples:\n{examples}\n\n"
            f"exit status:\n{textwrap.indent(page.exit_status, '  ')}"
        )
        _ARGUMENTS[name](parser)


def add_audit_tools(tools: Any) -> None:
    """The same commands among ``audit``'s tools, each with its manual page."""
    for name in COMMANDS:
        _ARGUMENTS[name](tool(tools, name, MANUALS[name]))


def _live_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="the embedded default's ledger (a table of the PostgreSQL under CONSENT_DATA_DIR)",
    )


def _stream_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream",
        choices=[*STREAMS, "all"],
        default="all",
        help="which stream (default: all)",
    )


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on standard error even when it is not a terminal",
    )


def _export_arguments(export: argparse.ArgumentParser) -> None:
    _live_option(export)
    _stream_option(export)
    export.add_argument(
        "--partition",
        type=int,
        action="append",
        metavar="N",
        help="only partition N (again for more; default: every one)",
    )
    export.add_argument("--from", dest="start", type=int, metavar="OFFSET", help="first offset")
    export.add_argument(
        "--to", dest="stop", type=int, metavar="OFFSET", help="offset to stop before"
    )
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--no-checkpoints", action="store_true", help="leave the checkpoints out of the export"
    )
    export.add_argument(
        "--resume",
        metavar="FILE",
        help="the resume state of an export to --output (default: OUTPUT.resume); an "
        "interrupted export run again carries on from it",
    )
    _progress_option(export)


def _verify_arguments(verify: argparse.ArgumentParser) -> None:
    _live_option(verify)
    _stream_option(verify)
    verify.add_argument(
        "--export", metavar="FILE", help="the export to check (default: the live ledger)"
    )
    verify.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        metavar="FILE",
        help="more checkpoints, one JSON object a line (again for more)",
    )
    verify.add_argument(
        "--live-checkpoints",
        action="store_true",
        help="with --export, also read the checkpoints stored beside the live ledger",
    )
    verify.add_argument("--keys", required=True, metavar="KEYRING", help="the trusted public keys")
    verify.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how old an uncovered record may be before it is a finding (default 600)",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object, for a program")
    verify.add_argument(
        "--resume",
        metavar="FILE",
        help=f"the resume state (default: {VERIFY_STATE}, or EXPORT.verify-resume with "
        "--export); an interrupted verify run again skips the partitions it judged",
    )
    _progress_option(verify)


def _keys_arguments(keys: argparse.ArgumentParser) -> None:
    keys.add_argument("action", choices=["new", "public", "retire", "revoke"])
    keys.add_argument("target", metavar="FILE|KEY_ID", help="a key file, or a key id")
    keys.add_argument("--keyring", metavar="FILE", help="the keyring file to change")
    keys.add_argument(
        "--at", metavar="TIME", help="retire: ISO 8601 time it stopped signing (default now)"
    )


_ARGUMENTS = {"export": _export_arguments, "verify": _verify_arguments, "keys": _keys_arguments}


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "keys":
            return _keys(args)
        return asyncio.run(_EXPORT_OR_VERIFY[args.command](args))
    except _Usage as exc:
        print(f"{_prog(args)}: {exc}", file=sys.stderr)
        return 2
    except _Interrupted as exc:
        print(f"\n{_prog(args)} interrupted; {exc}", file=sys.stderr)
        return 130


def _prog(args: argparse.Namespace) -> str:
    """How the command was called, for its messages: ``consent-ledger verify``, or
    ``consent-ledger audit verify`` among the audit tools."""
    if getattr(args, "audit_command", None):
        return f"consent-ledger audit {args.audit_command}"
    return f"consent-ledger {args.command}"


class _Usage(Exception):
    """A usage error or an unreadable input: exit status 2."""


class _Interrupted(Exception):
    """Ctrl-C (or the test hook) after the resume state was saved: exit status 130."""


# -- keys -----------------------------------------------------------------------------


def _keys(args: argparse.Namespace) -> int:
    try:
        if args.action == "new":
            key = SigningKey.generate(Path(args.target))
            print(f"made {key.key_id} in {args.target}", file=sys.stderr)
            print(json.dumps({"keys": [key.public_entry()]}, indent=2))
            return 0
        if args.action == "public":
            key = SigningKey.load(Path(args.target))
            if args.keyring is None:
                print(json.dumps({"keys": [key.public_entry()]}, indent=2))
                return 0
            path = Path(args.keyring)
            keyring = Keyring.load(path) if path.exists() else Keyring()
            keyring.add(PublicKey(key.key_id, key.public))
            keyring.save(path)
            print(f"{key.key_id} is in {path}, active", file=sys.stderr)
            return 0
        if args.keyring is None:
            raise ValueError(f"{args.action} needs --keyring")
        path = Path(args.keyring)
        keyring = Keyring.load(path)
        if args.action == "retire":
            at = datetime.now(UTC) if args.at is None else datetime.fromisoformat(args.at)
            if at.tzinfo is None:
                raise ValueError("--at needs a time zone (for example 2026-12-02T10:00:00Z)")
            keyring.retire(args.target, at)
        else:
            keyring.revoke(args.target)
        keyring.save(path)
        print(f"{args.target} is {keyring.keys[args.target].status} in {path}", file=sys.stderr)
        return 0
    except (OSError, ValueError) as exc:
        print(f"{_prog(args)} {args.action}: {exc}", file=sys.stderr)
        return 1


# -- the live ledger ------------------------------------------------------------------


@dataclass
class _Live:
    records: RecordSource
    checkpoints: CheckpointStore


@contextlib.asynccontextmanager
async def _live(embedded: bool) -> AsyncIterator[_Live]:
    """The ledger and checkpoints the service's settings name, read-only."""
    from services.settings import Settings, SettingsError

    env = dict(os.environ)
    env.setdefault("CONSENT_AUTH_TOKENS_FILE", "-")  # these commands serve no one
    try:
        settings = Settings.from_env(env, embedded=embedded)
    except SettingsError as exc:
        raise _Usage(f"configuration error: {exc}") from exc
    if settings.ledger == "kafka":
        from services.adapters.kafka_audit import KafkaCheckpoints, KafkaRecords

        assert settings.kafka is not None
        records, checkpoints = KafkaRecords(settings.kafka), KafkaCheckpoints(settings.kafka)
        await records.start()
        try:
            await checkpoints.start(write=False)
            try:
                yield _Live(records, checkpoints)
            finally:
                await checkpoints.close()
        finally:
            await records.close()
        return
    import asyncpg

    from services.adapters.postgres_audit import PostgresCheckpoints, PostgresRecords
    from services.adapters.postgres_bounds import close_pool
    from services.bootstrap import start_embedded_postgres

    dsn = settings.postgres_dsn
    if dsn is None:
        dsn = (await asyncio.to_thread(start_embedded_postgres, settings.data_dir))[0]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield _Live(PostgresRecords(pool), PostgresCheckpoints(pool))
    finally:
        await close_pool(pool)


# -- export ---------------------------------------------------------------------------


async def _export(args: argparse.Namespace) -> int:
    from services.ledger_audit import (
        ExportMark,
        Range,
        all_streams,
        export,
        plan,
        stored_checkpoints,
    )

    if (args.start or 0) < 0 or (args.stop or 0) < 0:
        raise _Usage("--from and --to are offsets, 0 or more")
    if args.resume is not None and args.output is None:
        raise _Usage("--resume needs --output: an export to standard output cannot be resumed")
    request = {
        "stream": args.stream,
        "partition": args.partition,
        "from": args.start,
        "to": args.stop,
        "no_checkpoints": args.no_checkpoints,
        "output": None if args.output is None else os.path.abspath(args.output),
    }
    state = None
    if args.output is not None:
        state = ResumeState(Path(args.resume or f"{args.output}.resume"))
    try:
        saved = None if state is None else state.load()
    except (OSError, ValueError) as exc:
        raise _Usage(f"cannot read the resume state: {exc}") from exc
    if saved is not None and (saved.get("command"), saved.get("request")) != ("export", request):
        raise _Usage(
            f"{state.path if state else ''} is the resume state of another export; "
            "remove it to start this one over"
        )
    async with _live(args.embedded) as ledger:
        found = [] if args.no_checkpoints else await stored_checkpoints(ledger.checkpoints)
        checkpoints = [c for c in found if not isinstance(c, str)]
        mark = None
        if saved is None:
            partitions = None if args.partition is None else set(args.partition)
            ranges, notes = await plan(
                ledger.records,
                checkpoints,
                all_streams(args.stream),
                partitions,
                args.start,
                args.stop,
            )
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            exported_at = datetime.now(UTC)
        else:
            # The plan and the time of the interrupted run: the whole export is the
            # one it would have written.
            ranges = [Range(str(s), int(p), int(a), int(b)) for s, p, a, b in saved["ranges"]]
            exported_at = datetime.fromisoformat(saved["exported_at"])
            mark = None if saved["mark"] is None else ExportMark.from_json(saved["mark"])
        total = sum(r.stop - r.start for r in ranges)
        base = {
            "command": "export",
            "request": request,
            "ranges": [[r.stream, r.partition, r.start, r.stop] for r in ranges],
            "exported_at": exported_at.isoformat(),
        }
        with contextlib.ExitStack() as files:
            if args.output is None:
                out = sys.stdout
            elif mark is None:
                out = files.enter_context(open(args.output, "w"))
            else:
                out = files.enter_context(_cut_back(Path(args.output), mark.size))
            show = ProgressLine(sys.stderr, "export")
            shown = wanted(sys.stderr, args.progress)
            stop = StopAfter()
            began = time.monotonic()
            first = 0 if mark is None else mark.records
            latest = mark

            def done_at(at: ExportMark) -> int:
                whole = sum(r.stop - r.start for r in ranges[: at.index])
                if at.index < len(ranges) and at.offset is not None:
                    whole += at.offset - ranges[at.index].start
                return whole

            def save(at: ExportMark) -> None:
                out.flush()
                os.fsync(out.fileno())
                assert state is not None
                state.save({**base, "mark": at.to_json()})

            def moved(at: ExportMark) -> None:
                nonlocal latest
                latest = at
                if shown:
                    show(
                        Progress(
                            done_at(at),
                            total,
                            at.records - first,
                            time.monotonic() - began,
                            resumed=mark is not None,
                        )
                    )
                # every 2 s, and at each partition's end: a crash loses little
                if state is not None and (at.offset is None or state.due()):
                    save(at)
                if at.offset is not None:
                    stop.tick()

            if state is not None and mark is None:
                state.save({**base, "mark": None})  # the plan, before a line is written
            try:
                count = await export(
                    out, ledger.records, ranges, checkpoints, exported_at, mark=mark, moved=moved
                )
            except (KeyboardInterrupt, asyncio.CancelledError):
                show.end()
                if state is None:
                    raise _Interrupted("the export to standard output is incomplete") from None
                if latest is not None:
                    save(latest)
                raise _Interrupted(
                    f"run the same command again to carry on from {state.path}"
                ) from None
            show.end()
    if state is not None:
        state.remove()
    where = "" if args.output is None else f" to {args.output}"
    resumed = ""
    if mark is not None:
        resumed = f" (resumed at record {mark.records}: {count - mark.records} read by this run)"
    print(
        f"exported {count} record(s) of {len(ranges)} partition(s){where}, with "
        f"{0 if args.no_checkpoints else len(checkpoints)} checkpoint(s) to check them "
        f"against{resumed}",
        file=sys.stderr,
    )
    return 0


def _cut_back(path: Path, size: int) -> Any:
    """``path`` opened to append after cutting it back to ``size`` bytes: the last
    line an interrupted export wrote whole before its state was saved."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise _Usage(f"{path} is gone: remove its resume state to start over") from None
    if actual < size:
        raise _Usage(
            f"{path} holds {actual} bytes, fewer than the {size} its resume state "
            "says were written: remove the resume state to start over"
        )
    with open(path, "r+b") as f:
        f.truncate(size)
    return open(path, "a")


# -- verify ---------------------------------------------------------------------------


async def _verify(args: argparse.Namespace) -> int:
    from services.ledger_audit import (
        Judged,
        Verifier,
        all_streams,
        describe,
        ledger_size,
        read_checkpoints,
        read_export,
        read_ledger,
        stored_checkpoints,
    )

    if not args.grace >= 0:
        raise _Usage("--grace must be 0 or more seconds")
    try:
        keyring = Keyring.load(Path(args.keys))
        export = None
        if args.export is not None:
            with open(args.export) as lines:
                export = read_export(lines, args.export)
        extra = []
        for name in args.checkpoints:
            with open(name) as lines:
                extra += list(read_checkpoints(lines, name))
    except (OSError, ValueError) as exc:
        raise _Usage(str(exc)) from exc
    verifier = Verifier(keyring, timedelta(seconds=args.grace))
    streams = all_streams(args.stream)
    verifier.add_checkpoints(extra)
    request = {
        "export": None if args.export is None else os.path.abspath(args.export),
        "stream": args.stream,
        "keys": os.path.abspath(args.keys),
        "checkpoints": [os.path.abspath(name) for name in args.checkpoints],
        "live_checkpoints": args.live_checkpoints,
        "grace": args.grace,
    }
    default = VERIFY_STATE if args.export is None else f"{args.export}.verify-resume"
    state = ResumeState(Path(args.resume or default))
    try:
        saved = state.load()
    except (OSError, ValueError) as exc:
        raise _Usage(f"cannot read the resume state: {exc}") from exc
    if saved is not None and (saved.get("command"), saved.get("request")) != ("verify", request):
        print(
            f"note: {state.path} is the resume state of another verify; starting over",
            file=sys.stderr,
        )
        saved = None
    before: list[Judged] = []
    if saved is not None:
        before = [Judged.from_json(j) for j in saved["judged"]]
    for judgement in before:
        verifier.restore(judgement)
    skip = {j.where for j in before}
    done = sum(j.coverage.records for j in before)
    show = ProgressLine(sys.stderr, "verify")
    shown = wanted(sys.stderr, args.progress)
    stop = StopAfter()
    began = time.monotonic()
    read = 0
    judgements = list(before)

    def save(taken: datetime) -> None:
        state.save(
            {
                "command": "verify",
                "request": request,
                "taken_at": taken.isoformat(),
                "judged": [j.to_json() for j in judgements],
            }
        )

    def tick(total: int | None, n: int = 1) -> None:
        nonlocal read
        read += n
        if shown:
            show(Progress(done + read, total, read, time.monotonic() - began, bool(before)))
        stop.tick(n)

    def judge(
        where: tuple[str, int], span: tuple[int, int], records: list[Any], taken: datetime
    ) -> None:
        judgements.append(verifier.judge(where, span, records, taken))
        save(taken)  # a partition judged is seconds of work: kept at once

    # A partition is judged whole (its records are aligned with the checkpoints'
    # fingerprints as one sequence), so the resume state keeps each judged
    # partition's findings and coverage, and a resumed run starts over only the
    # partition it was interrupted in.
    taken = datetime.now(UTC)
    try:
        if export is not None:
            verifier.add_checkpoints(export.checkpoints)
            if args.live_checkpoints:
                async with _live(args.embedded) as ledger:
                    verifier.add_checkpoints(await stored_checkpoints(ledger.checkpoints))
            taken = export.taken_at or taken
            chosen = {w: r for w, r in export.records.items() if w[0] in streams}
            total = sum(len(r) for r in chosen.values())
            judged: set[tuple[str, int]] = set(skip)
            for where, records in sorted(chosen.items()):
                if where in skip:
                    continue
                tick(total, len(records))
                judge(where, export.ranges[where], records, taken)
                judged.add(where)
            verifier.missing(
                (c for c in export.checkpoints if not isinstance(c, str) and c.stream in streams),
                judged,
            )
        else:
            async with _live(args.embedded) as ledger:
                verifier.add_checkpoints(await stored_checkpoints(ledger.checkpoints))
                if saved is not None:
                    taken = datetime.fromisoformat(saved["taken_at"])
                total = await ledger_size(ledger.records, streams)
                async for where, span, records in read_ledger(
                    ledger.records, streams, taken, skip=skip, each=lambda: tick(total)
                ):
                    judge(where, span, records, taken)
    except (KeyboardInterrupt, asyncio.CancelledError):
        show.end()
        save(taken)
        raise _Interrupted(
            f"{len(judgements)} partition(s) judged are kept in {state.path}: "
            "run the same command again to carry on"
        ) from None
    show.end()
    state.remove()
    if before:
        print(
            f"resumed: {len(before)} partition(s) judged by the interrupted run, "
            f"{read} record(s) checked by this one",
            file=sys.stderr,
        )
    verdict = verifier.verdict()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not verdict.findings,
                    "findings": [
                        {
                            "kind": f.kind,
                            "stream": f.stream,
                            "partition": f.partition,
                            "offset": f.offset,
                            "detail": f.detail,
                        }
                        for f in verdict.findings
                    ],
                    "partitions": [
                        {
                            "stream": c.stream,
                            "partition": c.partition,
                            "from": c.start,
                            "to": c.end,
                            "records": c.records,
                            "covered_until": c.covered_until,
                            "chained_from": c.chained_from,
                            "uncovered": len(c.uncovered),
                        }
                        for c in verdict.coverage
                    ],
                    "trusted_checkpoints": verdict.trusted,
                },
                indent=2,
            )
        )
    else:
        for coverage in verdict.coverage:
            print(describe(coverage))
        keys = ", ".join(f"{n} by {k}" for k, n in sorted(verdict.trusted.items()))
        print(f"checkpoints trusted: {keys or 'none'}")
        for finding in verdict.findings:
            print(finding.line())
        if verdict.findings:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(verdict.summary().items()))
            print(f"NOT VERIFIED: {len(verdict.findings)} finding(s) ({counts})")
        else:
            print("verified: every checkpointed record is as it was signed")
    return 1 if verdict.findings else 0


_EXPORT_OR_VERIFY = {"export": _export, "verify": _verify}
