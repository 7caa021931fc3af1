"""Translation between the domain and the ``consent.v1`` protobuf messages.

``codec`` is the ledger's wire format (events, recorded events, snapshots);
``api`` translates the gRPC service's requests and replies.
"""
