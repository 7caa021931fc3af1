"""Apply the versioned SQL files in ``services/migrations`` to a PostgreSQL database.

Files are named ``NNNN_name.sql`` and applied in version order, each in its own
transaction together with its row in ``schema_migrations``, so a failed file
leaves nothing half-done and is retried next time. A session advisory lock makes
two processes starting at once take turns: the second finds everything applied.

A file whose first line is ``-- consent-ledger: no transaction`` runs its
statements one by one outside a transaction, and its row is written after the
last: for ``CREATE INDEX CONCURRENTLY``, which PostgreSQL runs only that way and
which, unlike a plain ``CREATE INDEX``, lets the projector keep writing to the
table meanwhile. Such a file must be safe to run again from the top (a failed
concurrent build leaves an invalid index behind: drop it first, ``IF EXISTS``).
Its statements are split at semicolons that end a line; comment lines are left out.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NO_TRANSACTION = "-- consent-ledger: no transaction"
# Any fixed 64-bit number works; this one is "consent-ledger migrations" by convention.
_LOCK_KEY = 0x436F6E73656E7401
_LOCK_POLL = 0.1

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @functools.cached_property
    def sql(self) -> str:  # read once: the checks below and the run all use it
        return self.path.read_text(encoding="utf-8")

    @property
    def in_transaction(self) -> bool:
        return not self.sql.startswith(_NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The file's statements, one by one (for a file run outside a transaction)."""
        lines = [ln for ln in self.sql.splitlines() if not ln.lstrip().startswith("--")]
        return [st.strip() for st in re.split(r";\s*$", "\n".join(lines), flags=re.M) if st.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``directory``, in version order; raises on a bad name."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(
                f"{path.name}: version {version} also used by {found[version].path.name}"
            )
        found[version] = Migration(version, path.stem, path)
    return [found[v] for v in sorted(found)]


async def migrate(pool_or_conn: Any, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied; return the names of those applied now."""
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _migrate(conn, directory)
    return await _migrate(pool_or_conn, directory)


async def _migrate(conn: asyncpg.Connection, directory: Path) -> list[str]:
    migrations = discover(directory)
    applied_now: list[str] = []
    # Asked for again and again rather than waited on: a statement waiting on the
    # lock holds a snapshot, and CREATE INDEX CONCURRENTLY in the session holding
    # the lock waits for every older snapshot, which would be a deadlock.
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        await asyncio.sleep(_LOCK_POLL)
    try:
        await conn.execute(_CREATE_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            record = (
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            if migration.in_transaction:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(*record)
            else:
                for statement in migration.statements():
                    await conn.execute(statement)
                await conn.execute(*record)
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def pending(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """The names of the migrations not applied yet, in version order; changes nothing
    (``migrate --check``: a pod that waits for the migrate Job must not race it)."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return [m.name for m in discover(directory)]
    done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.name for m in discover(directory) if m.version not in done]
