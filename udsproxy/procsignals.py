"""The signals udsproxy handles (shared by the command line and the supervisor). Pure.

SIGTERM and SIGINT drain, SIGHUP reloads, SIGUSR1 reopens the log files. Until their handlers
are in place they are blocked, so that one arriving early waits instead of killing the process
(or, for PID 1, being dropped by the kernel).
"""

from __future__ import annotations

import signal

__all__ = ["HANDLED"]

HANDLED = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
