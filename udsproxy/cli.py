"""Command line, with Envoy's flag names. The only place that exits the process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from udsproxy import __version__
from udsproxy.errors import ConfigError

__all__ = ["main"]

_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="udsproxy",
        description="HTTP/1.1 edge proxy configured with Envoy's v3 bootstrap YAML. "
        "Run 'udsproxy demo --help' for the one-machine demo.",
    )
    p.add_argument("-c", "--config-path", help="Envoy v3 bootstrap file (YAML or JSON)")
    p.add_argument("--config-yaml", help="bootstrap as an inline YAML string")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve")
    p.add_argument("-l", "--log-level", choices=_LEVELS, default="info")
    p.add_argument("--drain-time-s", type=float, default=5.0, help="graceful stop budget")
    p.add_argument(
        "--splice-min-bytes",
        type=int,
        default=None,
        help="relay Content-Length bodies at least this large with splice(2); 0 disables "
        "(default 262144)",
    )
    p.add_argument("--version", action="version", version=f"udsproxy {__version__}")
    return p


def _setup_logging(level: str) -> None:
    numeric = {"trace": logging.DEBUG, "warn": logging.WARNING, "off": logging.CRITICAL + 10}
    logging.basicConfig(
        level=numeric.get(level, getattr(logging, level.upper(), logging.INFO)),
        format="[%(asctime)s][%(levelname)s][%(name)s] %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["demo"]:
        from udsproxy.demo import main as demo_main

        return demo_main(args_list[1:])
    args = _parser().parse_args(args_list)
    _setup_logging(args.log_level)
    if not args.config_path and not args.config_yaml:
        print("udsproxy: one of -c/--config-path or --config-yaml is required", file=sys.stderr)
        return 2
    from udsproxy.config.load import load_config

    try:
        bootstrap = load_config(args.config_yaml if args.config_yaml else args.config_path)
    except ConfigError as exc:
        source = args.config_path or "--config-yaml"
        print(f"error initializing configuration '{source}':\n{exc.render()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error reading configuration: {exc}", file=sys.stderr)
        return 1
    for warning in bootstrap.warnings:
        print(f"udsproxy: warning: {warning}", file=sys.stderr)
    if args.mode == "validate":
        print(f"configuration '{args.config_path or '--config-yaml'}' OK")
        return 0
    import uvloop

    try:
        uvloop.run(_serve(bootstrap, args.drain_time_s, args.splice_min_bytes))
    except OSError as exc:
        print(f"udsproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(bootstrap: object, drain_time: float, splice_min: int | None) -> None:
    from udsproxy.config.schema import Bootstrap
    from udsproxy.server import DEFAULT_SPLICE_MIN_BYTES, Server

    assert isinstance(bootstrap, Bootstrap)
    server = await Server.start(
        bootstrap,
        announce=True,
        splice_min_bytes=DEFAULT_SPLICE_MIN_BYTES if splice_min is None else splice_min,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("udsproxy").info("shutting down (drain %.1fs)", drain_time)
    await server.stop(timeout=drain_time)
