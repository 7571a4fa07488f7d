"""The argument parser of ``rpi-inspect``: its commands, their flags and the environment
variables that give the flags' defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clients.python.rpi_client import operations_cli
from clients.python.rpi_client.channel import DEFAULT_MAX_MESSAGE_BYTES
from clients.python.rpi_client.client import INSPECTION_SERVICE_NAME

TARGET_ENV = "RPI_TARGET"
PERSISTENCE_TARGET_ENV = "RPI_PERSISTENCE_TARGET"
DEFAULT_TARGET = "localhost:50051"


def connection_parser() -> argparse.ArgumentParser:
    """The connection flags (TLS, token, authority, message size, keepalive, deadline) as a
    parent parser; ``cli.channel_options`` turns them into ``ChannelOptions``. rpi-replay's
    --rerun-model takes the same flags."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--tls", action="store_true", help="use TLS (system roots by default)")
    group.add_argument(
        "--tls-ca",
        "--ca-file",
        dest="ca_file",
        type=Path,
        help="PEM roots to trust (implies --tls)",
    )
    group.add_argument(
        "--tls-cert", "--cert", dest="cert", type=Path, help="client certificate for mutual TLS"
    )
    group.add_argument(
        "--tls-key", "--key", dest="key", type=Path, help="client private key for mutual TLS"
    )
    group.add_argument(
        "--token",
        default=os.environ.get("RPI_TOKEN") or None,
        help="bearer API key or JWT (default: $RPI_TOKEN); prefer the variable: "
        "arguments show in the process list",
    )
    group.add_argument("--authority", help="override :authority and the TLS server name")
    group.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / (1024 * 1024),
        help="largest message sent or received, MiB (default %(default)g)",
    )
    group.add_argument(
        "--keepalive-s",
        type=float,
        help="send keepalive pings this often (the server must permit it)",
    )
    group.add_argument("--timeout", type=float, help="deadline of each call, seconds")
    return parent


def build_parser() -> argparse.ArgumentParser:
    connection = connection_parser()
    parser = argparse.ArgumentParser(
        prog="rpi-inspect",
        description="Client of the reverse-pickup inspection service.",
        epilog="Exit status: 0 ok; 1-16 the gRPC status code of the failed call (3 "
        "INVALID_ARGUMENT, 5 NOT_FOUND, 14 UNAVAILABLE, ...); 64 usage error; 130 interrupted. "
        "The Go and Java examples exit the same way (docs/errors.md).",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="log level on stderr (default %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target_help = f"inspection service host:port (default ${TARGET_ENV} or {DEFAULT_TARGET})"
    persistence_help = f"persistence service host:port (default ${PERSISTENCE_TARGET_ENV})"

    inspect = commands.add_parser(
        "inspect",
        parents=[connection],
        help="run one inspection",
        description="Run one inspection. FILE arguments are sent inline; http(s) URLs are "
        "fetched by the server.",
    )
    inspect.add_argument(
        "--target", default=os.environ.get(TARGET_ENV, DEFAULT_TARGET), help=target_help
    )
    inspect.add_argument(
        "--reference",
        action="append",
        required=True,
        metavar="FILE|URL",
        help="vendor catalogue image (repeatable)",
    )
    inspect.add_argument(
        "--pickup",
        action="append",
        required=True,
        metavar="FILE|URL",
        help="field agent's photo (repeatable)",
    )
    inspect.add_argument(
        "--questions",
        required=True,
        type=Path,
        metavar="FILE",
        help='questions, YAML or JSON (typed list or legacy {"Question": []})',
    )
    inspect.add_argument("--product-name", required=True)
    inspect.add_argument("--shipping-id", required=True)
    inspect.add_argument("--product-id", default="")
    inspect.add_argument("--inspection-id", default="", help="UUID; the server picks one if unset")
    inspect.add_argument("--previous-inspection-id", default="")
    style = inspect.add_mutually_exclusive_group()
    style.add_argument(
        "--stream",
        dest="stream",
        action="store_true",
        default=True,
        help="InspectStream with live progress (default)",
    )
    style.add_argument("--unary", dest="stream", action="store_false", help="plain Inspect")
    output = inspect.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print the inspection as JSON (proto3 JSON mapping)"
    )
    output.add_argument(
        "--legacy-json", action="store_true", help="print the replaced API's response JSON"
    )

    get = commands.add_parser("get", parents=[connection], help="print a recorded inspection")
    get.add_argument(
        "--persistence-target",
        default=os.environ.get(PERSISTENCE_TARGET_ENV),
        help=persistence_help,
    )
    get.add_argument("inspection_id")

    list_ = commands.add_parser(
        "list", parents=[connection], help="list a shipment's recorded inspections"
    )
    list_.add_argument(
        "--persistence-target",
        default=os.environ.get(PERSISTENCE_TARGET_ENV),
        help=persistence_help,
    )
    list_.add_argument("--shipping-id", required=True)
    list_.add_argument("--page-size", type=int, default=50)
    list_.add_argument("--limit", type=int, help="stop after this many records")
    list_.add_argument("--json", action="store_true", help="print a JSON array of records")

    health = commands.add_parser("health", parents=[connection], help="standard health check")
    health.add_argument(
        "--target", default=os.environ.get(TARGET_ENV, DEFAULT_TARGET), help=target_help
    )
    health.add_argument(
        "--service",
        default=INSPECTION_SERVICE_NAME,
        help="service name to check ('' for the server; default %(default)s)",
    )

    operations_cli.add_parsers(
        commands, connection, os.environ.get(TARGET_ENV, DEFAULT_TARGET), target_help
    )
    convert = commands.add_parser(
        "legacy-convert",
        help="old JSON request -> InspectRequest JSON",
        description="Convert an old /process_request JSON body (FILE, or - for stdin) to "
        "InspectRequest JSON; with --inspection, convert Inspection JSON (as printed by "
        "'inspect --json') to the old response JSON instead.",
    )
    convert.add_argument("file", help="JSON file, or - for stdin")
    convert.add_argument(
        "--inspection",
        action="store_true",
        help="the input is an Inspection; print the old response shape",
    )
    return parser
