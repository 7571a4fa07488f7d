"""The argument parser of ``rpi-replay`` (tools/replay.py): the selection of stored inspections,
the policy replay's flags, and --rerun-model's (tools/replay_rerun.py) with the connection flags
rpi-inspect takes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from clients.python.rpi_client.cli_parser import connection_parser

EXIT_CHANGED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4  # --rerun-model: a re-run call failed

DEFAULT_CONCURRENCY = 4


def moment(text: str) -> datetime:
    """An ISO 8601 time; UTC when it names no zone."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpi-replay",
        description=description,
        formatter_class=argparse.RawTextHelpFormatter,
        # The connection flags (--tls, --tls-ca, --tls-cert, --tls-key, --token, --authority,
        # --timeout...) apply to --inference-target only.
        parents=[connection_parser()],
    )
    parser.add_argument(
        "--policy", type=Path, help="policy YAML file (required unless --rerun-model)"
    )
    parser.add_argument("--persistence-target", default="localhost:50052")
    parser.add_argument("--shipping-id", action="append", default=[], dest="shipping_ids")
    parser.add_argument("--since", type=moment, help="inspections created from (ISO 8601)")
    parser.add_argument("--until", type=moment, help="... up to, exclusive (default: now)")
    parser.add_argument(
        "--fail-on-change",
        action="store_true",
        help=f"exit {EXIT_CHANGED} when any decision would change",
    )
    rerun = parser.add_argument_group("model re-run")
    rerun.add_argument(
        "--rerun-model",
        action="store_true",
        help="run the model again on the archived images (Inspect on --inference-target) "
        "instead of deciding the stored outputs again",
    )
    rerun.add_argument(
        "--inference-target",
        metavar="HOST:PORT",
        help="inference service to re-run on (a staging one: each re-run is recorded)",
    )
    rerun.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help="Inspect calls in flight at once (default %(default)s)",
    )
    return parser
