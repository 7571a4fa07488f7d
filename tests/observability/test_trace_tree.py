"""tools/trace_tree reads console-exporter output mixed with JSON log lines and prints an
inspection's trace, then the traces that link to it."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

from tools.trace_tree import main, render, spans_in


def console_output() -> str:
    lines: list[str] = []

    class Capture:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=Capture())))  # type: ignore[arg-type]
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("Inspect", kind=SpanKind.SERVER) as server:
        server.set_attribute("inspection_id", "insp-1")
        with tracer.start_as_current_span("fetch"):
            lines.append(json.dumps({"message": "a log line", "context": "not a span"}) + "\n")
    with tracer.start_as_current_span(
        "RecordEvents",
        context=None,
        links=[Link(server.get_span_context(), {"inspection_id": "insp-1"})],
    ):
        pass
    with tracer.start_as_current_span("unrelated"):
        pass
    provider.shutdown()
    return "".join(lines)


def test_tree_with_the_linked_batch() -> None:
    text = console_output()
    spans = spans_in(text)
    assert sorted(s["name"] for s in spans) == ["Inspect", "RecordEvents", "fetch", "unrelated"]
    tree = render(spans, "insp-1").splitlines()
    assert tree[1].startswith("  Inspect [SERVER svc] UNSET inspection_id=insp-1")
    assert tree[2].startswith("    fetch [INTERNAL svc]")
    assert tree[3].startswith("linked trace ")
    assert tree[4].startswith("  RecordEvents [INTERNAL svc]")
    assert tree[5].startswith("    -> link to Inspect [SERVER] ")
    assert not any("unrelated" in line for line in tree)


def test_no_inspection_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_text('{"message": "only logs"}\n')
    assert main([str(path)]) == 1
