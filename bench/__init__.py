"""``make bench``: CanSend and CanSendBatch against a bare gRPC echo baseline.

Run ``python -m bench --help``; BENCHMARKS.md records what it measured.
"""
