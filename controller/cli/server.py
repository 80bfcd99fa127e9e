"""``nodeferry serve``, ``nodeferry token`` and ``nodeferry hosts forget HOST:PORT``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from controller.common import datadir
from controller.common.apitoken import ensure_token
from controller.common.config import load_settings
from controller.common.errors import ControllerError
from controller.common.target import parse_host_port
from controller.ssh.hostkeys import KnownHosts, host_entry
from controller.storage.database import Database
from controller.storage.shared import HostKeyStore
from protocol import mask_credentials


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
    serve.add_argument(
        "--no-auth",
        action="store_const",
        const=True,
        default=None,
        help="serve without an API token (loopback only): any local user and program "
        "could then run installs",
    )
    serve.set_defaults(func=serve_command)

    token = subparsers.add_parser(
        "token",
        help="print the controller's API token (made on first use)",
        description="Print the API token of the controller that uses this data dir.",
    )
    token.add_argument("--config", type=Path, default=None, help="INI config file")
    token.add_argument("--data-dir", type=Path, default=None, help="the controller's data dir")
    token.set_defaults(func=token_command)

    hosts = subparsers.add_parser("hosts", help="manage the controller's known host keys")
    hosts_sub = hosts.add_subparsers(dest="hosts_command", required=True, metavar="ACTION")
    forget = hosts_sub.add_parser(
        "forget", help="forget a host's key (after the instance was really replaced)"
    )
    forget.add_argument("host_port", metavar="HOST:PORT")
    forget.add_argument("--config", type=Path, default=None, help="INI config file")
    forget.set_defaults(func=forget_command)


def serve_command(args: argparse.Namespace) -> int:
    from controller.api import serving
    from controller.api.accesslog import RedactingAccessLogger
    from controller.api.app import create_app

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskCredentials())
    if args.log_level != "DEBUG":
        # paramiko logs every connection and SFTP session at INFO: noise at our scale.
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    # Everything the controller creates from here on is its user's alone: the
    # task database's WAL holds credentials (controller/common/datadir.py).
    datadir.use_private_umask()
    try:
        settings = load_settings(
            args.config,
            overrides={
                "host": args.host,
                "port": args.port,
                "data_dir": args.data_dir,
                "no_auth": args.no_auth,
            },
        )
        app = create_app(settings)
    except ControllerError as exc:
        print(f"nodeferry serve: {exc.message}", file=sys.stderr)
        return 2
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}/"
    print(f"nodeferry controller on {url} (data in {settings.data_dir})", flush=True)
    if settings.token:
        print(dashboard_line(url, settings.token, settings.data_dir, sys.stdout), flush=True)
    else:
        print(
            "WARNING: serving without an API token (--no-auth): every local user and "
            "program can start installs, including on this machine if allow_local is on",
            file=sys.stderr,
            flush=True,
        )
    asyncio.run(serving.serve(app, settings, RedactingAccessLogger))
    return 0


def dashboard_line(url: str, token: str, data_dir: Path, stream: TextIO) -> str:
    """Where the dashboard is. The token goes into the address only for a person at
    a terminal: a URL fragment never reaches a server or its access log, but
    serve's own output often ends up in one (journald, docker logs, a file), and
    the token there would let anyone who reads the log start installs."""
    if stream.isatty():
        return f"dashboard: {url}#token={token}"
    return (
        f"dashboard: {url} (it asks for the API token; print it on this machine with "
        f"`nodeferry token --data-dir {shlex.quote(str(data_dir))}`)"
    )


class MaskCredentials(logging.Filter):
    """Credentials in URLs masked in every line the controller logs (journald keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def token_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, overrides={"data_dir": args.data_dir})
        if settings.token is None and settings.database_url:
            from controller.api.app import controller_token

            database = Database(settings.registry_url)
            try:
                token = controller_token(settings, database)
            finally:
                database.close()
        else:
            token = settings.token or ensure_token(settings.data_dir)
    except ControllerError as exc:
        print(f"nodeferry token: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nodeferry token: cannot read or write the token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def forget_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        host, port = parse_host_port(args.host_port)
    except ControllerError as exc:
        print(f"nodeferry hosts forget: {exc.message}", file=sys.stderr)
        return 2
    if settings.database_url:
        # Shared by every controller on the registry: forgotten for all of them.
        try:
            database = Database(settings.registry_url)
        except ControllerError as exc:
            print(f"nodeferry hosts forget: {exc.message}", file=sys.stderr)
            return 2
        where = "the shared registry"
        try:
            forgot = HostKeyStore(database).forget(host_entry(host, port))
        finally:
            database.close()
    else:
        where = str(settings.known_hosts_path)
        forgot = KnownHosts(settings.known_hosts_path, settings.host_key_policy).forget(host, port)
    if forgot:
        print(f"forgot the host key of {host_entry(host, port)} ({where})")
        return 0
    print(f"{host_entry(host, port)} is not in {where}", file=sys.stderr)
    return 1
