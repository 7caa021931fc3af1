"""Changing a test topic's configs on a running broker, and waiting until it applies them."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

APPLIED_WITHIN_S = 20.0


async def altered(admin: AIOKafkaAdminClient, topic: str, configs: dict[str, str]) -> None:
    """Replace ``topic``'s configs with ``configs`` (``alter_configs`` sets the whole
    set) and return once the broker describes each of them so. The broker applies a
    change a moment after it answers (seen under load): a ledger that read the limits
    in between, or a record sent then, met the old ones."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs)
    await admin.alter_configs([resource])
    deadline = asyncio.get_running_loop().time() + APPLIED_WITHIN_S
    while True:
        (described,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
        (found,) = described.to_object()["resources"]
        served = {e["config_names"]: e["config_value"] for e in found["config_entries"]}
        if all(served.get(name) == value for name, value in configs.items()):
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = {n: v for n, v in configs.items() if served.get(n) != v}
            raise AssertionError(f"{topic}: the broker still serves other values than {missing}")
        await asyncio.sleep(0.05)
