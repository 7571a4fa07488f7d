"""``rpi-inspect``: command-line client of the inspection platform.

Results go to stdout, progress, warnings and errors to stderr, so ``--json`` output pipes
cleanly. Exit codes, the same as the Go and Java examples' (docs/errors.md, "Exit codes"): 0
ok; 1-16 the gRPC status code of the failed call (3 INVALID_ARGUMENT, 5 NOT_FOUND, 14
UNAVAILABLE..., with the code, reason, ErrorInfo metadata and field violations on stderr; a
health check answered NOT_SERVING is 14 too); 64 a usage error (bad flags, a file that cannot
be read or does not parse); 130 interrupted.

Examples::

    rpi-inspect inspect --target localhost:50051 --product-name "Blue mug" --shipping-id S1 \\
        --reference https://cdn.example.com/mug.jpg --pickup photo1.jpg --pickup photo2.jpg \\
        --questions questions.yaml
    rpi-inspect inspect ... --unary --json | jq .decision
    rpi-inspect get --persistence-target localhost:50052 7f1c...
    rpi-inspect list --persistence-target localhost:50052 --shipping-id S1
    rpi-inspect health --target localhost:50051
    rpi-inspect legacy-convert old_request.json > request.json
    name=$(rpi-inspect submit ... --request-id order-1) && rpi-inspect wait "$name"
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from rich.console import Console
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from clients.python.rpi_client import operations_cli, render
from clients.python.rpi_client.channel import ChannelOptions, tls_credentials
from clients.python.rpi_client.cli_parser import PERSISTENCE_TARGET_ENV, build_parser
from clients.python.rpi_client.client import InspectionClient, PersistenceReader, ServingStatus
from clients.python.rpi_client.errors import InspectionFailed
from clients.python.rpi_client.legacy import (
    inspection_to_legacy_response,
    legacy_request_to_proto,
)
from clients.python.rpi_client.requests import RequestBuildError, request_from_args

EXIT_OK = 0
EXIT_NOT_SERVING = int(grpc.StatusCode.UNAVAILABLE.value[0])
EXIT_USAGE = 64  # sysexits.h EX_USAGE; 1-16 are the gRPC codes
EXIT_INTERRUPTED = 130

PIPED_WIDTH = 140


class UsageError(Exception):
    """Bad arguments that argparse cannot catch by itself."""


def channel_options(args: argparse.Namespace) -> ChannelOptions:
    credentials = None
    if args.tls or args.ca_file or args.cert or args.key:
        try:
            credentials = tls_credentials(args.ca_file, args.cert, args.key)
        except (OSError, ValueError) as error:
            raise UsageError(f"TLS: {error}") from error
    if args.max_message_mb <= 0:
        raise UsageError("--max-message-mb must be positive")
    options = ChannelOptions(
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        credentials=credentials,
        keepalive_time_s=args.keepalive_s,
        authority=args.authority,
        token=args.token,
    )
    if args.timeout is not None:
        options = dataclasses.replace(options, default_timeout_s=args.timeout)
    return options


def _print_json(text: str) -> None:
    # Plain write, not rich: rich would wrap and colour, and the output must parse as JSON.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_inspect(args: argparse.Namespace, out: Console, err: Console) -> int:
    request = request_from_args(args, previous_inspection_id=args.previous_inspection_id)
    options = channel_options(args)
    started = time.perf_counter()
    with InspectionClient.connect(args.target, options) as client:
        if args.stream:
            inspection = _run_stream(client, request, err)
        else:
            with render.Waiting(err, f"waiting for Inspect on {args.target}"):
                inspection = client.inspect(request)
    round_trip_s = time.perf_counter() - started
    if inspection.model.untrained:
        render.warn_untrained(err)
    if args.json:
        _print_json(json_format.MessageToJson(inspection))
    elif args.legacy_json:
        legacy = inspection_to_legacy_response(inspection, total_time_s=round_trip_s)
        _print_json(json.dumps(legacy, indent=2, ensure_ascii=False))
    else:
        render.print_inspection(out, inspection, round_trip_s)
    return EXIT_OK


def _run_stream(
    client: InspectionClient, request: inspection_pb2.InspectRequest, err: Console
) -> inspection_pb2.Inspection:
    with render.StreamProgress(err) as progress:
        return client.inspect_streaming(request, progress.on_event)


async def _get(args: argparse.Namespace) -> str:
    async with PersistenceReader.connect(args.persistence_target, channel_options(args)) as reader:
        record = await reader.get_inspection(args.inspection_id, timeout=args.timeout)
    return json_format.MessageToJson(record)


def cmd_get(args: argparse.Namespace, out: Console, err: Console) -> int:
    _require_persistence_target(args)
    _print_json(asyncio.run(_get(args)))
    return EXIT_OK


async def _list(args: argparse.Namespace) -> list[persistence_pb2.InspectionRecord]:
    records: list[persistence_pb2.InspectionRecord] = []
    async with PersistenceReader.connect(args.persistence_target, channel_options(args)) as reader:
        async for record in reader.list_inspections(
            args.shipping_id, args.page_size, limit=args.limit, timeout=args.timeout
        ):
            records.append(record)
    return records


def cmd_list(args: argparse.Namespace, out: Console, err: Console) -> int:
    _require_persistence_target(args)
    if args.page_size <= 0:
        raise UsageError("--page-size must be positive")
    records = asyncio.run(_list(args))
    if args.json:
        dicts = [json_format.MessageToDict(record) for record in records]
        _print_json(json.dumps(dicts, indent=2, ensure_ascii=False))
    else:
        out.print(render.records_table(records))
    return EXIT_OK


def cmd_health(args: argparse.Namespace, out: Console, err: Console) -> int:
    with InspectionClient.connect(args.target, channel_options(args)) as client:
        status = client.health(args.service, **_timeout_kwargs(args))
    out.print(status.name, highlight=False)
    return EXIT_OK if status is ServingStatus.SERVING else EXIT_NOT_SERVING


def cmd_legacy_convert(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {args.file}: {error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{args.file}: not valid JSON: {error}") from error
    if args.inspection:
        inspection = inspection_pb2.Inspection()
        try:
            json_format.ParseDict(data, inspection)
        except json_format.ParseError as error:
            raise UsageError(f"{args.file}: not an Inspection: {error}") from error
        legacy = inspection_to_legacy_response(inspection)
        _print_json(json.dumps(legacy, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not isinstance(data, dict):
        raise UsageError(f"{args.file}: expected a JSON object")
    _print_json(json_format.MessageToJson(legacy_request_to_proto(data)))
    return EXIT_OK


def exit_code(failure: InspectionFailed) -> int:
    """The gRPC status code of the failed call, as a number (never 0)."""
    code = int(failure.code.value[0])
    return code if code != 0 else int(grpc.StatusCode.UNKNOWN.value[0])


def _hint(args: argparse.Namespace, failure: InspectionFailed) -> str | None:
    """What a failure without an ErrorInfo (grpc's own, before any server code ran) means."""
    if failure.reason:
        return None
    target = getattr(args, "target", None) or getattr(args, "persistence_target", None)
    if failure.code is grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach {target}: check the address, that the service is running, and "
            "--tls/--tls-ca if it serves TLS"
        )
    if failure.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target} within the deadline (--timeout)"
    return None


def cmd_operations(args: argparse.Namespace, out: Console, err: Console) -> int:
    return operations_cli.run(args, channel_options(args))


def _timeout_kwargs(args: argparse.Namespace) -> dict[str, float]:
    return {"timeout": args.timeout} if args.timeout is not None else {}


def _require_persistence_target(args: argparse.Namespace) -> None:
    if not args.persistence_target:
        raise UsageError(f"--persistence-target is required (or set ${PERSISTENCE_TARGET_ENV})")


_COMMANDS = {
    "inspect": cmd_inspect,
    "get": cmd_get,
    "list": cmd_list,
    "health": cmd_health,
    "legacy-convert": cmd_legacy_convert,
    **dict.fromkeys(("submit", "wait", "operations"), cmd_operations),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (``rpi-inspect`` passes it to ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage (its message printed), 0 for --help
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    # Consoles are made per call: sys.stdout/sys.stderr may have been replaced (tests, pipes).
    out = Console(file=sys.stdout)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        # Piped tables would otherwise be squeezed into rich's 80-column default.
        out = Console(file=sys.stdout, width=PIPED_WIDTH)
    err = Console(file=sys.stderr)
    try:
        return _COMMANDS[args.command](args, out, err)
    except (UsageError, RequestBuildError) as error:
        err.print(f"rpi-inspect: error: {error}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except InspectionFailed as failure:
        render.print_failure(err, failure)
        hint = _hint(args, failure)
        if hint is not None:
            err.print(f"rpi-inspect: {hint}", highlight=False, markup=False, soft_wrap=True)
        return exit_code(failure)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        return EXIT_INTERRUPTED
