"""Envoy's file access logger: format compiler and non-blocking sink."""
