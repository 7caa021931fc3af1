"""Dev servers from the command line.

    python -m tests.infra fetch    fetch/cache the Kafka jars (mvn), print their dir
    python -m tests.infra up       start Kafka + PostgreSQL detached; print and write env
                                   (the service's CONSENT_* settings, and a dev token)
    python -m tests.infra status   show what is running (exit 0 only if both are up)
    python -m tests.infra down     stop what `up` started

State lives in var/dev/ (gitignored) unless --state-dir is given: kafka/, postgres/
and env (KEY=value lines, sourceable by sh: `set -a; . var/dev/env; set +a`).
The servers keep running after `up` exits; `down` finds them through their pid files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.infra import InfraError
from tests.infra.kafka_broker import REPO_ROOT, KafkaBroker, ensure_jars
from tests.infra.postgres_server import PostgresServer

DEFAULT_STATE_DIR = REPO_ROOT / "var" / "dev"


def _servers(state_dir: Path) -> tuple[KafkaBroker, PostgresServer]:
    return (
        KafkaBroker(state_dir / "kafka", die_with_parent=False),
        PostgresServer(state_dir / "postgres", detached=True),
    )


DEV_TOKEN_NAME = "dev"


def _dev_token(state_dir: Path) -> tuple[Path, str]:
    """A tokens file with one admin token for every brand, made once: the file keeps
    only the token's digest, so the token itself is kept beside it in ``dev-token``."""
    from services.grpc_api.auth import add_token

    tokens, kept = state_dir / "tokens.json", state_dir / "dev-token"
    if not (tokens.exists() and kept.exists()):
        tokens.unlink(missing_ok=True)
        token = add_token(tokens, DEV_TOKEN_NAME, ["check", "write", "audit", "admin"], None)
        kept.write_text(token + "\n")
        kept.chmod(0o600)
    return tokens, kept.read_text().strip()


def _dev_checkpoint_key(state_dir: Path) -> Path:
    """The key the dev service signs its checkpoints with (README, "Tamper evidence")."""
    from services.checkpoints import SigningKey

    path = state_dir / "checkpoint-key.pem"
    SigningKey.load_or_generate(path)
    return path


def _env_lines(kafka: KafkaBroker, postgres: PostgresServer, state_dir: Path) -> list[str]:
    tokens, token = _dev_token(state_dir)
    return [
        # The service's own settings (README, "Configuration"): with these loaded,
        # `consent-ledger serve` runs against these servers.
        "CONSENT_LEDGER=kafka",
        f"CONSENT_KAFKA_BOOTSTRAP={kafka.bootstrap_servers}",
        # one broker: a topic can have no more replicas than that
        "CONSENT_KAFKA_REPLICATION_FACTOR=1",
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS=1",
        f"CONSENT_POSTGRES_DSN={postgres.dsn}",
        f"CONSENT_AUTH_TOKENS_FILE={tokens}",
        f"CONSENT_CHECKPOINT_KEY_FILE={_dev_checkpoint_key(state_dir)}",
        f"CONSENT_DATA_DIR={state_dir / 'data'}",
        "CONSENT_METRICS_LISTEN=127.0.0.1:9464",
        # not a setting: the admin token of the tokens file above, for grpcurl
        f"CONSENT_DEV_TOKEN={token}",
        f"KAFKA_BOOTSTRAP={kafka.bootstrap_servers}",
        f"POSTGRES_DSN={postgres.dsn}",
        # The names tests/infra/fixtures.py reads, so a sourced env file makes the test
        # suite reuse these servers instead of starting its own.
        f"CONSENT_TEST_KAFKA_BOOTSTRAP={kafka.bootstrap_servers}",
        f"CONSENT_TEST_POSTGRES_DSN={postgres.dsn}",
    ]


def cmd_fetch(_state_dir: Path) -> int:
    print(ensure_jars())
    return 0


def cmd_up(state_dir: Path) -> int:
    kafka, postgres = _servers(state_dir)
    started_kafka = False
    if not kafka.is_running():
        print("starting Kafka ...", file=sys.stderr, flush=True)
        kafka.start()
        started_kafka = True
    try:
        print("starting PostgreSQL ...", file=sys.stderr, flush=True)
        postgres.start()  # adopts an already-running server on the same data dir
    except InfraError:
        if started_kafka:  # all or nothing: do not leave half an environment behind
            kafka.stop()
        raise
    lines = _env_lines(kafka, postgres, state_dir)
    (state_dir / "env").write_text("".join(f"{line}\n" for line in lines))
    print("\n".join(lines))
    return 0


def cmd_down(state_dir: Path) -> int:
    kafka, postgres = _servers(state_dir)
    for name, server in (("Kafka", kafka), ("PostgreSQL", postgres)):
        pid = server.pid
        server.stop()
        print(f"{name}: stopped pid {pid}" if pid else f"{name}: was not running")
    (state_dir / "env").unlink(missing_ok=True)
    return 0


def cmd_status(state_dir: Path) -> int:
    kafka, postgres = _servers(state_dir)
    up = 0
    if kafka.pid is not None:
        print(f"Kafka: running, pid {kafka.pid}, bootstrap {kafka.bootstrap_servers}")
        up += 1
    else:
        print("Kafka: not running")
    if postgres.pid is not None:
        print(f"PostgreSQL: running, pid {postgres.pid}, data {postgres.pgdata}")
        up += 1
    else:
        print("PostgreSQL: not running")
    return 0 if up == 2 else 1


COMMANDS = {"fetch": cmd_fetch, "up": cmd_up, "down": cmd_down, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.infra",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where servers keep their data (default: {DEFAULT_STATE_DIR})",
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return COMMANDS[args.command](state_dir)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
