"""Shared test set-up. The real Kafka broker and PostgreSQL come from the
``tests.infra.fixtures`` plugin: a test that asks for them fails when they cannot
start, it never skips."""

import os

# Before gRPC is imported, as `consent-ledger serve` does (services/cli.py): this
# process forks only to exec (the Kafka JVM, pg_ctl), and gRPC's fork handlers, run
# in such a child once e2e tests have started gRPC's threads, can abort it before the
# exec (a broker restart once died with SIGABRT and gRPC's "epoll_wait error: Bad
# file descriptor" in the JVM's output).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest_plugins = ["tests.infra.fixtures"]
