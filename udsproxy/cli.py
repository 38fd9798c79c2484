"""Command line, with Envoy's flag names. The only place that exits the process."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from udsproxy import __version__
from udsproxy.envoy_flags import add_envoy_flags, check_envoy_flags
from udsproxy.errors import ConfigError
from udsproxy.procsignals import HANDLED

__all__ = ["main"]

_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


class _Version(argparse.Action):
    """--version, with the form that runs: pure Python or compiled (udsproxy.native)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from udsproxy.native import describe

        print(f"udsproxy {__version__} {describe()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="udsproxy",
        description="HTTP/1.1 edge proxy configured with Envoy's v3 bootstrap YAML. "
        "Run 'udsproxy demo --help' for the one-machine demo.",
        allow_abbrev=False,  # Envoy takes no abbreviated flags: neither do we
    )
    p.add_argument("-c", "--config-path", help="Envoy v3 bootstrap file (YAML or JSON)")
    p.add_argument("--config-yaml", help="bootstrap as an inline YAML string")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve")
    p.add_argument("-l", "--log-level", choices=_LEVELS, default="info")
    p.add_argument(
        "--drain-time-s",
        type=float,
        default=5.0,
        help="on SIGTERM/SIGINT, how long requests in flight may take to finish (default 5)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="worker processes (default: the CPUs this process may use: the affinity mask and "
        "the cgroup CPU quota, rounded up; 1 serves in this process unless it is PID 1)",
    )
    p.add_argument(
        "--splice-min-bytes",
        type=int,
        default=None,
        help="relay Content-Length request bodies at least this large, and upgraded tunnels, "
        "with splice(2); 0 disables all splicing (default 262144)",
    )
    p.add_argument(
        "--splice-responses",
        action="store_true",
        help="splice large Content-Length response bodies too (off: measured slower here)",
    )
    p.add_argument(
        "--ready-requires-upstream",
        action="store_true",
        help="admin /ready answers 503 while no upstream socket file exists (default: off)",
    )
    p.add_argument(
        "--disable-request-stats",
        action="store_true",
        help="do not count per-request stats (to measure what counting costs)",
    )
    p.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    add_envoy_flags(p)
    return p


def _setup_logging(args: argparse.Namespace) -> str | None:
    """udsproxy's own log (--log-level, --log-path, --log-format, --component-log-level);
    returns an error message for a bad flag value."""
    from udsproxy.applog import compile_spdlog, parse_component_levels, setup_logging

    try:
        if args.log_format:
            compile_spdlog(args.log_format)
        levels = parse_component_levels(args.component_log_level or "")
        setup_logging(
            args.log_level,
            log_path=args.log_path,
            log_format=args.log_format,
            component_levels=levels,
        )
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] and os.path.basename(args_list[0]) == "envoy":
        # Envoy's image takes `envoy -c ...` as its arguments too (its entrypoint script), so
        # a container spec that passes them works with this image unchanged
        args_list = args_list[1:]
    if args_list[:1] == ["demo"]:
        from udsproxy.tools.demo import main as demo_main

        return demo_main(args_list[1:])
    if args_list[:1] == ["bench"]:
        from udsproxy.tools.bench import main as bench_main

        return bench_main(args_list[1:])
    args = _parser().parse_args(args_list)
    problem = check_envoy_flags(args) or _setup_logging(args)
    if problem:
        print(f"udsproxy: {problem}", file=sys.stderr)
        return 2
    if not args.config_path and not args.config_yaml:
        print("udsproxy: one of -c/--config-path or --config-yaml is required", file=sys.stderr)
        return 2
    from udsproxy.config.isolated import load_isolated
    from udsproxy.config.load import load_and_resolve

    if args.mode == "serve":
        # Until the handlers are in place (supervisor.serve unblocks them), SIGHUP and SIGUSR1
        # would kill the process, and as PID 1 a SIGTERM would be lost: they wait instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    source = args.config_yaml if args.config_yaml else args.config_path
    name = args.config_path or "--config-yaml"
    try:
        # dynamic CDS/LDS files are read and checked too, as `envoy --mode validate` does;
        # to serve, in a child process: the schema's 22 MiB stay out of the proxy
        load = load_and_resolve if args.mode == "validate" else load_isolated
        bootstrap = load(source)
    except ConfigError as exc:
        print(f"error initializing configuration '{name}':\n{exc.render()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error reading configuration: {exc}", file=sys.stderr)
        return 1
    for warning in bootstrap.warnings:
        print(f"udsproxy: warning: {warning}", file=sys.stderr)
    if args.mode == "validate":
        print(f"configuration '{name}' OK")
        return 0
    from udsproxy.native import stale_modules
    from udsproxy.server import DEFAULT_SPLICE_MIN_BYTES
    from udsproxy.supervisor import run_workers, serve

    for module in stale_modules():
        print(
            f"udsproxy: warning: {module} runs compiled from an older source: rebuild "
            "(bash scripts/build-native) or remove the build (--clean)",
            file=sys.stderr,
        )

    splice = DEFAULT_SPLICE_MIN_BYTES if args.splice_min_bytes is None else args.splice_min_bytes
    from udsproxy.cpus import usable_cpus

    concurrency = args.concurrency or usable_cpus()
    options: dict[str, Any] = {
        "splice_min_bytes": splice,
        "splice_responses": args.splice_responses,
        "request_stats": not args.disable_request_stats,
        "ready_requires_upstream": args.ready_requires_upstream,
        "options": {k: v for k, v in vars(args).items() if k != "config_yaml"},
    }
    try:
        # As PID 1 (a container without an init) the supervisor serves as init: it reaps any
        # orphan, which the serving process (its own forked config loader) must not do.
        if concurrency == 1 and os.getpid() != 1:
            import uvloop

            uvloop.run(serve(source, drain_time=args.drain_time_s, loaded=bootstrap, **options))
            return 0
        return run_workers(source, bootstrap, concurrency, args.drain_time_s, **options)
    except OSError as exc:
        print(f"udsproxy: cannot start: {exc}", file=sys.stderr)
        return 1
