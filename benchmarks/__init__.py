"""udsproxy's benchmark harness: ``python -m benchmarks`` (see harness.py and README.md here)."""
