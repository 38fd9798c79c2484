"""udsproxy: an HTTP/1.1 edge proxy that reads Envoy's config and forwards to Unix sockets."""

__version__ = "0.1.0"
