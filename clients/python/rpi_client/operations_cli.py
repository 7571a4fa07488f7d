"""``rpi-inspect submit``, ``wait`` and ``operations list|get|cancel``: asynchronous inspections
(docs/operations-async.md) over the sync channel of the other commands.

``submit`` prints the operation's name on stdout (so ``name=$(rpi-inspect submit ...)`` works);
``wait`` and ``operations get`` print the operation as JSON (proto3 JSON mapping);
``operations list`` prints one line per operation (name, state, inspection id), or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, json_format
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc

from clients.python.rpi_client.channel import ChannelOptions, sync_channel
from clients.python.rpi_client.errors import InspectionFailed
from clients.python.rpi_client.requests import request_from_args

# Each WaitOperation asks the server to wait this long; `wait` repeats it until done.
_WAIT_STEP_S = 30.0


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    connection: argparse.ArgumentParser,
    target_default: str,
    target_help: str,
) -> None:
    submit = commands.add_parser(
        "submit",
        parents=[connection],
        help="queue one inspection; print its operation's name",
        description="Queue one inspection (SubmitInspection); the inspection arguments are "
        "those of 'inspect'.",
    )
    submit.add_argument("--target", default=target_default, help=target_help)
    submit.add_argument("--reference", action="append", required=True, metavar="FILE|URL")
    submit.add_argument("--pickup", action="append", required=True, metavar="FILE|URL")
    submit.add_argument("--questions", required=True, type=Path, metavar="FILE")
    submit.add_argument("--product-name", required=True)
    submit.add_argument("--shipping-id", required=True)
    submit.add_argument("--product-id", default="")
    submit.add_argument("--inspection-id", default="")
    submit.add_argument("--request-id", default="", help="idempotency key (AIP-155)")
    submit.add_argument("--callback-url", default="", help="https URL to POST the result to")

    wait = commands.add_parser(
        "wait", parents=[connection], help="wait for an operation; print it as JSON"
    )
    wait.add_argument("--target", default=target_default, help=target_help)
    wait.add_argument("name", help="operations/<id>")

    operations = commands.add_parser(
        "operations", parents=[connection], help="list, get or cancel operations"
    )
    operations.add_argument("--target", default=target_default, help=target_help)
    actions = operations.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="your operations, newest first")
    states = ["queued", "running", "succeeded", "failed", "cancelled"]
    listing.add_argument("--state", choices=states)
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    for action in ("get", "cancel"):
        actions.add_parser(action, help=f"{action} one operation").add_argument("name")


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _call(function: Callable[[], object]) -> object:
    try:
        return function()
    except grpc.RpcError as error:
        raise InspectionFailed.from_rpc_error(error) from error


def _state(operation: lro.Operation) -> str:
    meta = opb.InspectionOperationMetadata()
    operation.metadata.Unpack(meta)
    return opb.OperationState.Name(meta.state).removeprefix("OPERATION_STATE_")


def _json(operation: lro.Operation) -> str:
    return json_format.MessageToJson(operation, preserving_proto_field_name=True)


def run(args: argparse.Namespace, options: ChannelOptions) -> int:
    """Runs submit, wait or operations; returns the exit code (0; 3 when a waited operation
    ended failed or cancelled)."""
    with sync_channel(args.target, options) as channel:
        ops = lro_grpc.OperationsStub(channel)
        timeout = options.default_timeout_s
        if args.command == "submit":
            request = opb.SubmitInspectionRequest(
                inspection=request_from_args(args),
                request_id=args.request_id,
            )
            if args.callback_url:
                request.callback.url = args.callback_url
            stub = opb_grpc.AsyncInspectionServiceStub(channel)
            operation = _call(lambda: stub.SubmitInspection(request, timeout=timeout))
            assert isinstance(operation, lro.Operation)
            _print(operation.name)
            return 0
        if args.command == "wait":
            return _wait(ops, args.name)
        if args.action == "list":
            return _list(ops, args)
        if args.action == "get":
            got = _call(lambda: ops.GetOperation(lro.GetOperationRequest(name=args.name)))
            assert isinstance(got, lro.Operation)
            _print(_json(got))
            return 0
        _call(lambda: ops.CancelOperation(lro.CancelOperationRequest(name=args.name)))
        return 0


def _wait(ops: lro_grpc.OperationsStub, name: str) -> int:
    step = duration_pb2.Duration()
    step.FromSeconds(int(_WAIT_STEP_S))
    while True:
        started = time.monotonic()
        operation = _call(
            lambda: ops.WaitOperation(
                lro.WaitOperationRequest(name=name, timeout=step), timeout=_WAIT_STEP_S + 10
            )
        )
        assert isinstance(operation, lro.Operation)
        if operation.done:
            _print(_json(operation))
            return 0 if operation.HasField("response") else 3
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)  # a server that answers at once: do not spin


def _list(ops: lro_grpc.OperationsStub, args: argparse.Namespace) -> int:
    wanted = f"state={args.state.upper()}" if args.state else ""
    found: list[lro.Operation] = []
    token = ""
    while True:
        request = lro.ListOperationsRequest(
            name="operations", filter=wanted, page_size=args.page_size, page_token=token
        )
        page = _call(lambda: ops.ListOperations(request))  # noqa: B023 - called at once
        assert isinstance(page, lro.ListOperationsResponse)
        found += page.operations
        token = page.next_page_token
        if not token:
            break
    if args.json:
        dicts = [json_format.MessageToDict(o, preserving_proto_field_name=True) for o in found]
        _print(json.dumps(dicts, indent=2))
        return 0
    for operation in found:
        meta = opb.InspectionOperationMetadata()
        operation.metadata.Unpack(meta)
        _print(f"{operation.name}\t{_state(operation)}\t{meta.inspection_id}")
    return 0
