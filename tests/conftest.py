"""Shared test set-up. The real Kafka broker and PostgreSQL come from the
``tests.infra.fixtures`` plugin: a test that asks for them fails when they cannot
start, it never skips."""

import os

import pytest

# Before gRPC is imported, as `consent-ledger serve` does (services/cli.py): this
# process forks only to exec (the Kafka JVM, pg_ctl), and gRPC's fork handlers, run
# in such a child once e2e tests have started gRPC's threads, can abort it before the
# exec (a broker restart once died with SIGABRT and gRPC's "epoll_wait error: Bad
# file descriptor" in the JVM's output).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest_plugins = ["tests.infra.fixtures"]

# Figures a test wants shown in the run's summary (the revocation corpus's
# recall and false-flag share): they print under `pytest -q` too, captured
# output or not.
_SUMMARY_LINES: list[str] = []


@pytest.fixture
def record_corpus_figures():
    """Call with a line to print in the terminal summary at the end of the run."""
    return _SUMMARY_LINES.append


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY_LINES:
        terminalreporter.section("figures")
        for line in _SUMMARY_LINES:
            terminalreporter.write_line(line)
