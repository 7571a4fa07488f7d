"""Prints the trace tree of one inspection from OpenTelemetry console-exporter output.

Run the services with ``OTEL_TRACES_EXPORTER=console`` (for example
``OTEL_TRACES_EXPORTER=console make demo``, whose service logs land in ``var/demo/``), then::

    python -m tools.trace_tree var/demo/*.log [--inspection-id ID]

The inspection's trace is printed as a tree (caller, inference server span, stages), followed
by each persistence trace whose batch span links to it (RecordEvents and its SQL), with the
span that the link points at. The input may mix spans with other output (JSON log lines): only
the JSON objects that are spans are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Span = dict[str, Any]
# Attributes worth showing on a line, in this order.
_SHOWN = ("inspection_id", "inspection_ids", "rpc.grpc.status_code", "image", "db.statement")
_MAX_VALUE = 60


def spans_in(text: str) -> list[Span]:
    """Every span JSON object in ``text`` (console exporter output, possibly mixed)."""
    decoder = json.JSONDecoder()
    found: list[Span] = []
    at = text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict) and {"context", "kind", "name"} <= value.keys():
            found.append(value)
        at = text.find("{", end)
    return found


def _id(span: Span) -> str:
    return str(span["context"]["span_id"])


def _trace(span: Span) -> str:
    return str(span["context"]["trace_id"])


def _service(span: Span) -> str:
    return str(span.get("resource", {}).get("attributes", {}).get("service.name", "?"))


def _line(span: Span) -> str:
    attributes = span.get("attributes") or {}
    shown = []
    for key in _SHOWN:
        if key in attributes:
            value = " ".join(str(attributes[key]).split())
            shown.append(f"{key}={value[:_MAX_VALUE]}{'...' if len(value) > _MAX_VALUE else ''}")
    kind = str(span["kind"]).removeprefix("SpanKind.")
    status = span.get("status", {}).get("status_code", "UNSET")
    return f"{span['name']} [{kind} {_service(span)}] {status} {' '.join(shown)}".rstrip()


def _tree(
    spans: Sequence[Span], out: list[str], indent: str = "", names: dict[str, str] | None = None
) -> None:
    ids = {_id(s) for s in spans}
    children: defaultdict[str | None, list[Span]] = defaultdict(list)
    for span in spans:
        parent = span.get("parent_id")
        children[parent if parent in ids else None].append(span)

    def walk(span: Span, depth: int) -> None:
        out.append(f"{indent}{'  ' * depth}{_line(span)}")
        for link in span.get("links") or []:
            target = link["context"]
            label = (link.get("attributes") or {}).get("inspection_id", "")
            name = (names or {}).get(str(target["span_id"]), "span")
            out.append(
                f"{indent}{'  ' * depth}  -> link to {name} {target['span_id']} "
                f"of trace {target['trace_id']} (inspection_id={label})"
            )
        for child in sorted(children[_id(span)], key=lambda s: str(s.get("start_time"))):
            walk(child, depth + 1)

    for root in sorted(children[None], key=lambda s: str(s.get("start_time"))):
        walk(root, 0)


def render(spans: Iterable[Span], inspection_id: str | None = None) -> str:
    """The tree of the trace whose span names ``inspection_id`` (the first inspection found
    when None), then the traces that link into it."""
    spans = list(spans)
    named = [s for s in spans if (s.get("attributes") or {}).get("inspection_id")]
    if inspection_id is not None:
        named = [s for s in named if s["attributes"]["inspection_id"] == inspection_id]
    if not named:
        raise ValueError("no span names an inspection_id")
    trace_id = _trace(min(named, key=lambda s: str(s.get("start_time"))))
    inspection_id = str(named[0]["attributes"]["inspection_id"])
    by_trace: defaultdict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[_trace(span)].append(span)
    out = [f"trace {trace_id} (inspection {inspection_id})"]
    _tree(by_trace[trace_id], out, "  ")
    linking = sorted(
        {
            _trace(s)
            for s in spans
            if _trace(s) != trace_id
            and any(link["context"]["trace_id"] == trace_id for link in s.get("links") or [])
        }
    )
    names = {_id(s): f"{s['name']} [{str(s['kind']).removeprefix('SpanKind.')}]" for s in spans}
    for other in linking:
        out.append(f"linked trace {other}")
        _tree(by_trace[other], out, "  ", names)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trace_tree", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="console-exporter output")
    parser.add_argument("--inspection-id", help="the inspection (default: the first found)")
    args = parser.parse_args(argv)
    spans = [s for f in args.files for s in spans_in(f.read_text("utf-8", "replace"))]
    try:
        print(render(spans, args.inspection_id))
    except ValueError as exc:
        print(f"trace_tree: {exc} ({len(spans)} spans read)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
