"""``nodeferry serve`` and ``nodeferry hosts forget HOST:PORT``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from controller.core.config import load_settings
from controller.core.errors import ControllerError
from controller.core.target import parse_host_port
from controller.ssh.hostkeys import KnownHosts, host_entry


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the controller (HTTP API, SSH to instances)",
        description="Run the controller. Every setting can also come from a config file "
        "(--config) or an environment variable NODEFERRY_<NAME>.",
    )
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8765)")
    serve.add_argument("--config", type=Path, default=None, help="INI config file")
    serve.add_argument("--data-dir", type=Path, default=None, help="task registry directory")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=serve_command)

    hosts = subparsers.add_parser("hosts", help="manage the controller's known host keys")
    hosts_sub = hosts.add_subparsers(dest="hosts_command", required=True, metavar="ACTION")
    forget = hosts_sub.add_parser(
        "forget", help="forget a host's key (after the instance was really replaced)"
    )
    forget.add_argument("host_port", metavar="HOST:PORT")
    forget.add_argument("--config", type=Path, default=None, help="INI config file")
    forget.set_defaults(func=forget_command)


def serve_command(args: argparse.Namespace) -> int:
    from controller.api.app import create_app

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":
        # paramiko logs every connection and SFTP session at INFO: noise at our scale.
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        settings = load_settings(
            args.config,
            overrides={"host": args.host, "port": args.port, "data_dir": args.data_dir},
        )
        app = create_app(settings)
    except ControllerError as exc:
        print(f"nodeferry serve: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"nodeferry controller on http://{settings.host}:{settings.port} "
        f"(data in {settings.data_dir})",
        flush=True,
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None)
    return 0


def forget_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        host, port = parse_host_port(args.host_port)
    except ControllerError as exc:
        print(f"nodeferry hosts forget: {exc.message}", file=sys.stderr)
        return 2
    known = KnownHosts(settings.known_hosts_path, settings.host_key_policy)
    if known.forget(host, port):
        print(f"forgot the host key of {host_entry(host, port)} ({settings.known_hosts_path})")
        return 0
    print(f"{host_entry(host, port)} is not in {settings.known_hosts_path}", file=sys.stderr)
    return 1
