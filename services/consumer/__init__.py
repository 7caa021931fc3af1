"""Follow the ledger's event stream from another service (the contract: protos/README.md)."""

from services.consumer.stream import (
    Handler,
    StreamConsumer,
    StreamConsumerSettings,
    StreamEvent,
    UndecodableRecord,
    decode_record,
)

__all__ = [
    "Handler",
    "StreamConsumer",
    "StreamConsumerSettings",
    "StreamEvent",
    "UndecodableRecord",
    "decode_record",
]
