"""Shared test set-up. The real Kafka broker and PostgreSQL come from the
``tests.infra.fixtures`` plugin: a test that asks for them fails when they cannot
start, it never skips."""

pytest_plugins = ["tests.infra.fixtures"]
