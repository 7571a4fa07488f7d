"""GetInspection and ListInspections: the read queries and the mapping of their rows."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from persistence_svc import paging
from persistence_svc.records import (
    AttemptData,
    FailureData,
    InspectionDetail,
    InspectionPage,
    InspectionRow,
    InspectionStatus,
    PageCursor,
)
from persistence_svc.repository import sql
from persistence_svc.repository.connection import DbConnection


def row_to_inspection(row: asyncpg.Record) -> InspectionRow:
    failure = None
    if row["failure_stage"] is not None:
        failure = FailureData(
            stage=row["failure_stage"],
            reason=row["failure_reason"],
            message=row["failure_message"],
            status_code=row["failure_status_code"],
        )
    return InspectionRow(
        inspection_id=row["inspection_id"],
        shipping_id=row["shipping_id"],
        product_id=row["product_id"],
        product_name=row["product_name"],
        previous_inspection_id=row["previous_inspection_id"],
        method=row["method"],
        caller=row["caller"],
        legacy_questions=row["legacy_questions"],
        questions_json=row["questions"],
        images_json=row["images"],
        request_recorded=row["request_recorded"],
        is_latest=row["is_latest"],
        status=InspectionStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result_payload_json=row["result_payload"],
        failure=failure,
        vendor_id=row["vendor_id"],
        export_uri=row["export_uri"],
    )


def row_to_attempt(row: asyncpg.Record) -> AttemptData:
    return AttemptData(
        attempt_number=row["attempt_number"],
        prompt=row["prompt"],
        prompt_sha256=row["prompt_sha256"],
        template_version=row["template_version"],
        template_sha256=row["template_sha256"],
        raw_output=row["raw_output"],
        parsed_output_json=row["parsed_output"],
        valid=row["valid"],
        validation_errors_json=row["validation_errors"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        duration_ms=row["duration_ms"],
        constrained=row["constrained"],
        model_name=row["model_name"],
        model_revision=row["model_revision"],
    )


async def fetch_detail(conn: DbConnection, inspection_id: UUID) -> InspectionDetail | None:
    row = await conn.fetchrow(sql.GET_RECORD, inspection_id)
    if row is None:
        return None
    attempts = await conn.fetch(sql.GET_ATTEMPTS, inspection_id)
    return InspectionDetail(
        row=row_to_inspection(row), attempts=[row_to_attempt(a) for a in attempts]
    )


async def fetch_page_records(
    conn: DbConnection, shipping_id: str, page_size: int, cursor: PageCursor | None
) -> list[asyncpg.Record]:
    # One row more than asked tells whether another page exists.
    if cursor is None:
        return await conn.fetch(sql.LIST_FIRST_PAGE, shipping_id, page_size + 1)
    return await conn.fetch(
        sql.LIST_NEXT_PAGE,
        shipping_id,
        page_size + 1,
        cursor.created_at,
        cursor.inspection_id,
    )


async def fetch_window_records(
    conn: DbConnection, start: datetime, end: datetime, page_size: int, cursor: PageCursor | None
) -> list[asyncpg.Record]:
    """As fetch_page_records, for the inspections created in [start, end)."""
    if cursor is None:
        return await conn.fetch(sql.WINDOW_FIRST_PAGE, start, end, page_size + 1)
    return await conn.fetch(
        sql.WINDOW_NEXT_PAGE, start, end, page_size + 1, cursor.created_at, cursor.inspection_id
    )


def build_page(records: list[asyncpg.Record], page_size: int, fingerprint: str) -> InspectionPage:
    """The page of ``records`` (fetched by fetch_page_records) and the token of the next one."""
    rows = [row_to_inspection(r) for r in records[:page_size]]
    next_token = ""
    if len(records) > page_size and rows:
        last = rows[-1]
        next_token = paging.encode_page_token(
            PageCursor(created_at=last.created_at, inspection_id=last.inspection_id),
            fingerprint,
        )
    return InspectionPage(rows=rows, next_page_token=next_token)
