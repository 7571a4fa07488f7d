"""Terminal rendering for the CLI: live stream progress and warnings (stderr), result tables
(stdout). Kept apart from argument handling so the output format can change in one place."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from google.protobuf import duration_pb2
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from clients.python.rpi_client.errors import InspectionFailed

UNTRAINED_WARNING = (
    "UNTRAINED DEMO MODEL: the service runs a randomly initialised model. "
    "Its answers and decision carry no meaning; do not act on them."
)


def decision_name(decision: inspection_pb2.Decision.ValueType) -> str:
    return {
        inspection_pb2.DECISION_PICK: "PICK",
        inspection_pb2.DECISION_NOT_PICK: "NOT PICK",
        inspection_pb2.DECISION_RETAKE_IMAGES: "RETAKE IMAGES",
        inspection_pb2.DECISION_NEEDS_REVIEW: "NEEDS REVIEW",
    }.get(decision, "UNSPECIFIED")


def recommendation_name(value: inspection_pb2.Recommendation.ValueType) -> str:
    name = inspection_pb2.Recommendation.Name(value)
    return name.removeprefix("RECOMMENDATION_")


def _seconds(duration: duration_pb2.Duration) -> str:
    return f"{duration.ToTimedelta().total_seconds():.3f}"


class StreamProgress:
    """A live progress bar on stderr fed with InspectStream events; answers print above it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("connecting", total=None)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    @property
    def current_stage(self) -> tuple[str, float, float | None]:
        """(description, completed, total) of the stage line."""
        task = self._progress.tasks[0]
        return task.description, task.completed, task.total

    def stage(self, description: str, completed: float = 0, total: float | None = None) -> None:
        """Sets the stage line; ``total=None`` makes the bar indeterminate (pulsing)."""
        # Progress.update treats total=None as "unchanged"; a stage without a measure must
        # clear the previous stage's total, which only the Task object allows. Set it first so
        # that update() sees the new total when it decides whether the task finished.
        self._progress.tasks[0].total = total
        self._progress.update(self._task, description=description, completed=completed)

    def on_event(self, event: inspection_pb2.InspectStreamResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "accepted":
            self.stage(f"accepted {event.accepted.inspection_id}")
        elif kind == "images_fetched":
            fetched, total = event.images_fetched.fetched, event.images_fetched.total
            self.stage(f"images fetched {fetched}/{total}", fetched, total or None)
        elif kind == "preprocessing_done":
            done = event.preprocessing_done
            self.stage(
                f"preprocessing done: {done.tiles} tiles, {done.prompt_tokens} prompt tokens"
            )
        elif kind == "queued":
            position = event.queued.position
            self.stage("generation starting" if position == 0 else f"queued at position {position}")
        elif kind == "generation_progress":
            gen = event.generation_progress
            self.stage(
                f"attempt {gen.attempt}: tokens {gen.tokens_generated}/{gen.max_new_tokens}",
                gen.tokens_generated,
                gen.max_new_tokens or None,
            )
        elif kind == "answer_ready":
            ready = event.answer_ready
            retake = " [retake photo]" if ready.retake_image else ""
            # The model's own answer as generated: the final one, after the decision rules,
            # is in the Inspection and may differ (a low confidence, a policy rule).
            line = Text.assemble(
                ("model's raw answer ", "dim"),
                (ready.label, "bold"),
                f": {ready.result} (confidence {ready.confidence}%){retake}",
            )
            self._console.print(line, highlight=False, soft_wrap=True)
        elif kind == "inspection":
            self.stage("done", 1, 1)


class Waiting:
    """A spinner on stderr for a unary call."""

    def __init__(self, console: Console, description: str) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn(description),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._progress.add_task(description, total=None)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()


def warn_untrained(console: Console) -> None:
    console.print(
        Panel(Text(UNTRAINED_WARNING, style="bold"), title="WARNING", style="bold red"),
        highlight=False,
    )


def print_failure(console: Console, failure: InspectionFailed) -> None:
    lines = failure.describe()
    # Unwrapped, so that a log search for the reason or the field finds the whole line.
    console.print(Text(f"error: {lines[0]}", style="bold red"), highlight=False, soft_wrap=True)
    for line in lines[1:]:
        console.print(Text(line), highlight=False, soft_wrap=True)


def inspection_summary(inspection: inspection_pb2.Inspection) -> Text:
    """Who, what and the decision, in two lines."""
    model = inspection.model
    colour = {
        inspection_pb2.DECISION_PICK: "green",
        inspection_pb2.DECISION_RETAKE_IMAGES: "yellow",
        inspection_pb2.DECISION_NEEDS_REVIEW: "yellow",
    }.get(inspection.decision, "red")
    return Text.assemble(
        ("Inspection ", "bold"),
        inspection.inspection_id,
        f" · shipping {inspection.shipping_id}",
        f" · product {inspection.product_id}" if inspection.product_id else "",
        "\n",
        ("Decision: ", "bold"),
        (decision_name(inspection.decision), f"bold {colour}"),
        f" (model recommends {recommendation_name(inspection.model_recommendation)}, "
        f"match score {inspection.match_score:g}, attempts {inspection.attempts}, "
        f"model {model.name} {model.revision}".rstrip()
        + (", UNTRAINED" if model.untrained else "")
        + ")",
    )


def answers_table(inspection: inspection_pb2.Inspection) -> Table:
    """One row per question: final answer against the expected value, with evidence."""
    table = Table(
        title="Answers (final, after the decision rules)", title_justify="left", expand=True
    )
    table.add_column("Question", overflow="fold", ratio=3, min_width=16)
    table.add_column("Answer", overflow="fold", ratio=1, min_width=8)
    table.add_column("Expected", overflow="fold", ratio=1, min_width=8)
    table.add_column("Conf.", justify="right", no_wrap=True)
    table.add_column("Flags", no_wrap=True)
    table.add_column("Evidence", overflow="fold", ratio=4, min_width=14)
    for answer in inspection.answers:
        matches = answer.answer == answer.value_to_check
        flags = [
            flag
            for flag, on in (
                ("mandatory", answer.mandatory),
                ("retake", answer.retake_image),
                ("missed", answer.source == inspection_pb2.ANSWER_SOURCE_MISSED),
            )
            if on
        ]
        question = Text(answer.label)
        if answer.type:
            question.append(f"\n{answer.type}", style="dim")
        table.add_row(
            question,
            Text(answer.answer, style="" if matches else "red"),
            answer.value_to_check,
            str(answer.confidence),
            "\n".join(flags),
            answer.evidence,
        )
    return table


def timings_table(inspection: inspection_pb2.Inspection, round_trip_s: float | None) -> Table:
    timings = inspection.timings
    table = Table(title="Timings (s)", title_justify="left")
    stages = ("fetch", "preprocess", "queue", "generate", "parse", "total")
    for stage in stages:
        table.add_column(stage, justify="right")
    values = [_seconds(getattr(timings, stage)) for stage in stages]
    if round_trip_s is not None:
        table.add_column("round trip", justify="right")
        values.append(f"{round_trip_s:.3f}")
    table.add_row(*values)
    return table


def print_inspection(
    console: Console, inspection: inspection_pb2.Inspection, round_trip_s: float | None
) -> None:
    console.print(inspection_summary(inspection), highlight=False)
    console.print(answers_table(inspection))
    analysis = inspection.analysis
    for title, text in (
        ("Pickup images", analysis.pickup_description),
        ("Reference images", analysis.reference_description),
        ("Comparison", analysis.comparison),
    ):
        if text:
            console.print(Text.assemble((f"{title}: ", "bold"), text), highlight=False)
    console.print(timings_table(inspection, round_trip_s))


def records_table(records: list[persistence_pb2.InspectionRecord]) -> Table:
    table = Table(title="Inspections (newest first)")
    for column in ("Inspection", "Status", "Decision", "Latest", "Created", "Previous"):
        table.add_column(column, overflow="fold")
    for record in records:
        status = persistence_pb2.InspectionStatus.Name(record.status)
        decision = decision_name(record.result.decision) if record.HasField("result") else ""
        created = (
            record.create_time.ToDatetime().isoformat(sep=" ", timespec="seconds") + "Z"
            if record.HasField("create_time")
            else ""
        )
        table.add_row(
            record.inspection_id,
            status.removeprefix("INSPECTION_STATUS_"),
            decision,
            "yes" if record.is_latest else "no",
            created,
            record.previous_inspection_id,
        )
    return table
