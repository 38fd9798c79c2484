"""Envoy v3 bootstrap -> udsproxy's frozen config model."""
