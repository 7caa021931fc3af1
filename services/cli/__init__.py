"""The ``consent-ledger`` command: ``services.cli.main`` parses and dispatches, and
each command is one module of this package (the audit tools in ``audit/``)."""

import os

# Before gRPC is imported: its fork handlers guard processes that fork and then use
# gRPC in the child. This process forks only to exec (pg_ctl, for the embedded
# PostgreSQL), so the handlers have nothing to guard, and when they run beside
# gRPC's threads they only print a warning ("skipping fork() handlers").
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
