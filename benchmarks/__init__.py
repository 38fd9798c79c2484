"""udsproxy's benchmark harness: ``python -m benchmarks`` (see harness.py and the README)."""
