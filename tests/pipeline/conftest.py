"""A pipeline over the fakes of ``fakes``: real intake, attempts, stream, decision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference_svc.domain.prompt import PromptTemplate
from inference_svc.pipeline import InspectionPipeline, PipelineConfig
from tests.pipeline.fakes import FakeFetcher, MemoryRecorder, prepare
from tests.support.fake_engine import FakeEngine

Build = Callable[..., InspectionPipeline]


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def template() -> PromptTemplate:
    return PromptTemplate.load()


@pytest.fixture
def recorder() -> MemoryRecorder:
    return MemoryRecorder()


@pytest.fixture
def build(
    executor: ThreadPoolExecutor, template: PromptTemplate, recorder: MemoryRecorder
) -> Build:
    def make(
        engine: FakeEngine, fetcher: FakeFetcher | None = None, **config: int
    ) -> InspectionPipeline:
        return InspectionPipeline(
            fetcher=fetcher or FakeFetcher(),
            prepare=prepare,
            engine=engine,
            template=template,
            recorder=recorder,
            executor=executor,
            config=PipelineConfig(**config),
        )

    return make
