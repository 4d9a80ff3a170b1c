"""`coderd` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


def _emulator_parser(sub) -> None:
    p = sub.add_parser("emulator", help="serve the built-in emulator of the coding API on 127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--client-id", default=None, help="accepted client id (default: the guide's client1)")
    p.add_argument("--client-secret", default=None, help="its secret (default: the guide's secret123)")
    p.add_argument("--tier", choices=["public", "partner"], default="partner")
    p.add_argument("--rate", type=float, default=1.0, help="calls per second per client over /v1 (0: no throttle)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds added to every /v1 call")
    p.add_argument("--processing-seconds", type=float, default=60.0,
                   help="least time a batch operation stays in_progress")
    p.add_argument("--storage-dir", default=None, help="where batch files live (default: a temporary directory)")


async def _serve_emulator(args) -> int:
    from .emulator import Client, EmulatorConfig, EmulatorServer, Faults
    from .emulator.settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    client_id = args.client_id or DEFAULT_CLIENT_ID
    secret = args.client_secret or DEFAULT_CLIENT_SECRET
    config = EmulatorConfig(
        clients={client_id: Client(secret, args.tier)},
        requests_per_second=args.rate,
        processing_seconds=args.processing_seconds,
        storage_dir=args.storage_dir,
        faults=Faults(latency=args.latency),
    )
    server = await EmulatorServer(config, port=args.port).start()
    print(f"coding API emulator on {server.url} (auth_url = api_url = {server.url}); "
          f"client {client_id!r}, tier {args.tier}, {args.rate:g} call/s, {args.latency:g} s latency",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="the daemon: consume coding requests and publish replies")
    p.add_argument("--config", default=None, help="TOML file (default: config/coderd.toml when present)")


def _run_daemon(args) -> int:
    """A start-up failure coderd can name is one line on stderr, no traceback, and the
    exit code systemd expects: 2 for configuration (RestartPreventExitStatus=2: no
    restart), 1 for the rest (an unreachable broker: Restart=on-failure tries again)."""
    from .config import StartupError, settings_for_command
    from .logs import configure_logging

    settings = settings_for_command(args.config)
    configure_logging(settings.log_format)
    try:
        return asyncio.run(_serve_daemon(settings))
    except StartupError as exc:
        print(f"coderd: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code


async def _serve_daemon(settings) -> int:
    from .service import Daemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await Daemon(settings).run(stop)


def _jobs_parser(sub) -> None:
    p = sub.add_parser("jobs", help="list the batch jobs journaled in state_dir and their phase")
    p.add_argument("--config", default=None, help="TOML file (default: config/coderd.toml when present)")
    p.add_argument("--json", action="store_true", help="one JSON object per job")


def _list_jobs(args) -> int:
    import json
    import time

    from .batch.journal import Journal
    from .config import settings_for_command

    settings = settings_for_command(args.config, credentials_required=False)
    jobs = Journal(settings.state_dir).jobs()
    for job in jobs:
        row = {"job": job.job_id, "phase": job.phase, "kind": job.kind, "topic": job.topic,
               "records": job.total, "invalid": job.invalid, "correlation_id": job.correlation_id,
               "operations": [p.operation_id for p in job.parts if p.operation_id],
               "age_seconds": round(time.time() - job.created_at), "input": job.input_file,
               "output": job.output_file, "failure": job.failure}
        if args.json:
            print(json.dumps(row))
        else:
            ops = ",".join(row["operations"]) or "-"
            print(f"{job.job_id}  {job.phase:<11} {job.kind:<7} {job.topic:<8} {job.total:>9} records  "
                  f"age {row['age_seconds']:>6}s  operations {ops}  correlation_id {job.correlation_id}")
    if not jobs and not args.json:
        print(f"no batch jobs in {settings.state_dir}")
    return 0


# Commands that live in their own module, each exposing add_<name>_arguments(parser) and
# <name>_main(args) -> int.
COMMAND_MODULES = {
    "status": ("daemon.ops.status", "one screen from the running daemon's endpoints"),
    "submit": ("daemon.tools.submit", "code a CSV or JSONL file through a running daemon; results as CSV beside it"),
    "convert": ("daemon.tools.convert", "turn coding-API or coderd JSONL output into the guide's flat CSV"),
    "topics": ("daemon.tools.gathering", "list the coding API's topics"),
    "models": ("daemon.tools.gathering", "list a topic's models"),
}


def _module_commands(sub) -> dict:
    import importlib

    handlers = {}
    for name, (module_name, help_text) in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built into this version
        parser = sub.add_parser(name, help=help_text)
        getattr(module, f"add_{name}_arguments")(parser)
        handlers[name] = getattr(module, f"{name}_main")
    return handlers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coderd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _jobs_parser(sub)
    _emulator_parser(sub)
    handlers = _module_commands(sub)
    args = parser.parse_args(argv)
    if args.command in handlers:
        return handlers[args.command](args)
    if args.command == "run":
        return _run_daemon(args)
    if args.command == "jobs":
        return _list_jobs(args)
    if args.command == "emulator":
        return asyncio.run(_serve_emulator(args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
