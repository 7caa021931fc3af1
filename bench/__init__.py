"""``make bench``: CanSend and CanSendBatch against a bare gRPC echo baseline.

Run ``python -m bench --help``; BENCHMARKS.md has the latest run, bench/HISTORY.md
the earlier ones.
"""
