"""Signed webhooks of finished asynchronous inspections (the Standard Webhooks specification,
signed with the ``standardwebhooks`` library).

Deliveries come from the outbox in Postgres (ClaimWebhooks, under a lease), not from memory, so
they survive restarts of either service. An attempt: the destination is checked again with the
image URL and address rules (and dialled through the same PolicyResolver, so the address is
checked at connect), one POST with a 15 s timeout and no redirects followed; 2xx is delivered,
410 Gone stops delivery, anything else (a redirect included) is retried on the persistence
service's schedule and finally dead-lettered. ``webhook-id`` is the same every attempt.

Secrets (WEBHOOK_SECRETS_FILE, YAML, re-read when it changes)::

    default: whsec_...            # the service-wide secret
    callers:                      # per calling identity, where callers are configured
      returns-backend: [whsec_new, whsec_old]   # a list signs with each (key rotation)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import yaml
from rpi.persistence.v1 import persistence_pb2 as ppb
from standardwebhooks import Webhook

from inference_svc.domain.errors import InspectionError
from inference_svc.operations.callbacks import CallbackGuard
from inference_svc.operations.jobs_link import JobsLink, LeaseLost

log = logging.getLogger(__name__)

Render = Callable[[ppb.Job], str]
OutcomeHook = Callable[[str], None]

USER_AGENT = "rpi-inference-webhooks/1"
_LABELS: dict[int, str] = {
    ppb.WEBHOOK_OUTCOME_DELIVERED: "delivered",
    ppb.WEBHOOK_OUTCOME_FAILED: "failed",
    ppb.WEBHOOK_OUTCOME_GONE: "gone",
}
_BATCH = 8


class WebhookSecretsError(ValueError):
    """The secrets file is unusable (the start fails on it)."""


def _secret_list(value: object, where: str) -> tuple[str, ...]:
    raw = value if isinstance(value, list) else [value]
    items = [i for i in raw if isinstance(i, str) and i.startswith("whsec_")]
    if not items or len(items) != len(raw):
        raise WebhookSecretsError(f"{where}: a whsec_... secret or a list of them")
    for item in items:
        Webhook(item)  # malformed base64 fails here, at start, not at the first delivery
    return tuple(items)


@dataclass
class WebhookSecrets:
    path: Path
    default: tuple[str, ...] = ()
    callers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _mtime: float = 0.0

    @classmethod
    def load(cls, path: Path) -> WebhookSecrets:
        secrets = cls(path)
        secrets.reload()
        return secrets

    def reload(self) -> None:
        mtime = self.path.stat().st_mtime
        data = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(data, dict):
            raise WebhookSecretsError(f"{self.path}: a mapping with default and/or callers")
        default = _secret_list(data["default"], "default") if "default" in data else ()
        callers = data.get("callers") or {}
        if not isinstance(callers, dict):
            raise WebhookSecretsError(f"{self.path}: callers maps caller names to secrets")
        self.callers = {str(k): _secret_list(v, f"callers.{k}") for k, v in callers.items()}
        self.default = default
        self._mtime = mtime

    def refresh(self) -> None:
        """Re-reads a changed file; a broken new version keeps the old secrets (logged)."""
        try:
            if self.path.stat().st_mtime != self._mtime:
                self.reload()
        except (OSError, WebhookSecretsError, yaml.YAMLError) as exc:
            log.error("webhook secrets not reloaded: %s", exc)

    def for_caller(self, caller: str) -> tuple[str, ...]:
        return self.callers.get(caller, self.default)


def signature_headers(
    secrets: tuple[str, ...], webhook_id: str, body: str, now: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers: one v1 signature per secret (rotation), space-separated."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(webhook_id, now, body) for s in secrets),
    }


class WebhookSender:
    def __init__(
        self,
        link: JobsLink,
        render: Render,
        guard: CallbackGuard,
        secrets: WebhookSecrets | None,
        *,
        name: str,
        poll_s: float,
        timeout_s: float = 15.0,
        on_outcome: OutcomeHook = lambda outcome: None,
    ) -> None:
        self._link = link
        self._render = render
        self._guard = guard
        self._secrets = secrets
        self._name = name
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._on_outcome = on_outcome
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        resolver = self._guard.resolver
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, force_close=True)
            if resolver is not None
            else aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"User-Agent": USER_AGENT},
        )
        self._task = asyncio.create_task(self._loop(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                if self._secrets is not None:
                    self._secrets.refresh()
                due = await self._link.claim_webhooks(
                    self._name, _BATCH, lease_s=self._timeout_s + 30.0
                )
                await asyncio.gather(*(self._deliver(d) for d in due))
                failures = 0
                if len(due) == _BATCH:
                    continue
            except InspectionError as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("webhook outbox unreachable: %s", exc)
            await asyncio.sleep(self._poll_s * min(failures + 1, 10))

    async def _attempt(self, delivery: ppb.WebhookDelivery) -> tuple[int, str]:
        """(outcome, error) of one POST."""
        secrets = self._secrets.for_caller(delivery.job.caller) if self._secrets else ()
        if not secrets:
            return ppb.WEBHOOK_OUTCOME_FAILED, "no webhook secret for the caller"
        try:
            await self._guard.check(delivery.url)
        except InspectionError as exc:
            return ppb.WEBHOOK_OUTCOME_FAILED, f"destination refused: {exc.message}"
        body = self._render(delivery.job)
        headers = {
            **signature_headers(secrets, delivery.webhook_id, body, datetime.now(tz=UTC)),
            "Content-Type": "application/json",
        }
        assert self._session is not None
        try:
            async with self._session.post(
                delivery.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return ppb.WEBHOOK_OUTCOME_FAILED, f"timeout after {self._timeout_s:.0f} s"
        except (aiohttp.ClientError, OSError) as exc:
            return ppb.WEBHOOK_OUTCOME_FAILED, f"connection failed: {type(exc).__name__}"
        if 200 <= status < 300:
            return ppb.WEBHOOK_OUTCOME_DELIVERED, ""
        if status == 410:
            return ppb.WEBHOOK_OUTCOME_GONE, "HTTP 410 Gone"
        return ppb.WEBHOOK_OUTCOME_FAILED, f"HTTP {status}"

    async def _deliver(self, delivery: ppb.WebhookDelivery) -> None:
        started = time.monotonic()
        outcome, error = await self._attempt(delivery)
        try:
            state = await self._link.report_webhook(
                delivery.webhook_id, delivery.lease_token, outcome, error
            )
        except (InspectionError, LeaseLost) as exc:
            # The lease runs out and the attempt is made again: receivers deduplicate on
            # webhook-id.
            log.warning("webhook attempt not reported: %s", exc)
            return
        label = _LABELS[outcome]
        self._on_outcome(label)
        log.info(
            "webhook attempt",
            extra={
                "webhook_id": delivery.webhook_id,
                "attempt": delivery.attempt,
                "outcome": label,
                "error": error,
                "state": state.state,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
