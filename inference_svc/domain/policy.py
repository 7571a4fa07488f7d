"""Decision policy as typed, versioned configuration: one YAML file (a ConfigMap in Kubernetes)
with a default policy and per-vendor policies, validated when loaded and on every reload.

An empty file section means "as today": every default below reproduces the decision rules of
``inference_svc.domain.decision`` exactly (semantic comparison, forced Pick on, fuzzy label
matches counting, no mandatory questions beyond none, no confidence floors, quality gate and
fraud checks off).

A vendor's entry is merged key by key over the file's ``default`` section, so a vendor states
only where it differs::

    schema: 1
    version: "2026-12-03.1"
    default:
      quality: {mode: flag}
    vendors:
      electronics-co:
        mandatory: {categories: [seal_verification]}
        confidence_floors: {overall: 60}
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference_svc.domain.categories import Category, categorise
from inference_svc.domain.decision_rules import Comparison, DecisionRules
from inference_svc.domain.models import Question

logger = logging.getLogger(__name__)

DEFAULT_POLICY_NAME = "default"
BUILTIN_VERSION = "builtin"
# The reused-photo lookup searches 4 bands of 16 bits; beyond this distance a band must be
# searched at radius 3 (2,000+ probes per band), which no index keeps fast.
MAX_REUSE_DISTANCE = 11


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityMode(enum.StrEnum):
    OFF = "off"  # not measured
    FLAG = "flag"  # measured and reported; the decision is unchanged
    ENFORCE = "enforce"  # a failing image ends the inspection with RETAKE_IMAGES, no generation


class QualityThresholds(_Strict):
    """Limits of the quality gate (``inference_svc.imaging.quality`` measures). Sharpness and
    exposure are measured on the image's 448x448 overview (the model's thumbnail tile), so the
    same limit holds for every camera resolution. Calibrate on real traffic in ``flag`` mode
    before enforcing."""

    # Variance of the Laplacian of the overview's luma: a Gaussian blur of sigma 1 px at the
    # overview's scale, or a 3x3 box blur, takes a sharp photo under it. Darkening lowers it
    # too (the Laplacian scales with contrast), so an underexposed photo is often also blurry.
    min_sharpness: float = Field(default=15.0, ge=0)
    # Mean luma (0-255) and the share of crushed (<= 16) or blown (>= 239) pixels.
    min_mean_luma: float = Field(default=45.0, ge=0, le=255)
    max_mean_luma: float = Field(default=215.0, ge=0, le=255)
    max_dark_fraction: float = Field(default=0.5, ge=0, le=1)
    max_bright_fraction: float = Field(default=0.5, ge=0, le=1)
    # The shorter side, in pixels of the decoded (upright) image.
    min_short_side: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> QualityThresholds:
        if self.min_mean_luma >= self.max_mean_luma:
            raise ValueError("min_mean_luma must be below max_mean_luma")
        return self


class QualityGate(_Strict):
    mode: QualityMode = QualityMode.OFF
    thresholds: QualityThresholds = QualityThresholds()
    # Reference images are the vendor's catalogue photos, retaken by nobody at the door.
    include_reference_images: bool = False


class FraudChecks(_Strict):
    """Perceptual-hash checks (64-bit dHash, ``inference_svc.imaging.phash``); distances are
    Hamming distances between hashes. A match sends the inspection to review."""

    # A pickup photo that is (a re-encoding of) the request's own catalogue photo.
    catalogue_photo: bool = False
    catalogue_max_distance: int = Field(default=10, ge=0, le=64)
    # A pickup photo seen in an earlier inspection of a different shipment.
    reused_photo: bool = False
    reused_max_distance: int = Field(default=6, ge=0, le=MAX_REUSE_DISTANCE)
    # The lookup's budget; past it the inspection proceeds with the check marked skipped.
    reused_lookup_timeout_s: float = Field(default=0.25, gt=0, le=5)


class ConfidenceFloors(_Strict):
    """Below a floor the outcome is NEEDS_REVIEW. Unset floors do not apply."""

    # The model's overall score (0-100, ``match_score``).
    overall: float | None = Field(default=None, ge=0, le=100)
    # Every question's answer confidence (0-100; a question the model missed has 0).
    question: int | None = Field(default=None, ge=0, le=100)
    # Per question label (compared ignoring case and surrounding whitespace); wins over
    # ``question`` for that label.
    by_label: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _in_range(self) -> ConfidenceFloors:
        for label, floor in self.by_label.items():
            if not 0 <= floor <= 100:
                raise ValueError(f"by_label[{label!r}]: floor must be 0-100")
        return self

    def floor_for(self, question: Question) -> int | None:
        wanted = _label_key(question.label)
        for label, floor in self.by_label.items():
            if _label_key(label) == wanted:
                return floor
        return self.question


class MandatoryQuestions(_Strict):
    """Questions that must pass (be answered by the model with their value to check): when one
    fails the outcome is NOT_PICK whatever the model recommended."""

    labels: list[str] = Field(default_factory=list)
    categories: list[Category] = Field(default_factory=list)
    # Whether the request's own IsMandatory flags make a question must-pass. Off by default:
    # the replaced service carried the flag through without deciding on it.
    request_flags: bool = False

    def applies_to(self, question: Question) -> bool:
        if self.request_flags and question.mandatory:
            return True
        if self.labels and _label_key(question.label) in {_label_key(x) for x in self.labels}:
            return True
        return bool(self.categories) and categorise(question) in self.categories


class DecisionPolicy(_Strict):
    """The policy of one vendor (or the default)."""

    # How an answer is compared with its value to check (forced Pick and mandatory questions).
    # SEMANTIC is the default because it is what this service has decided with since it went
    # live: switching the default to LITERAL would change existing vendors' decisions.
    comparison: Comparison = Comparison.SEMANTIC
    forced_pick: bool = True
    fuzzy_counts_for_forced_pick: bool = True
    mandatory: MandatoryQuestions = MandatoryQuestions()
    confidence_floors: ConfidenceFloors = ConfidenceFloors()
    quality: QualityGate = QualityGate()
    fraud: FraudChecks = FraudChecks()

    def rules(self) -> DecisionRules:
        return DecisionRules(
            comparison=self.comparison,
            forced_pick=self.forced_pick,
            fuzzy_counts_for_forced_pick=self.fuzzy_counts_for_forced_pick,
        )


class PolicyFile(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    version: str = Field(min_length=1, max_length=64)
    default: DecisionPolicy = DecisionPolicy()
    vendors: dict[str, DecisionPolicy] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _vendors_over_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        default = data.get("default") or {}
        vendors = data.get("vendors") or {}
        if not isinstance(default, dict) or not isinstance(vendors, dict):
            return data  # the field validators report the wrong type
        merged = {
            str(name): _merge(default, entry) if isinstance(entry, dict) else entry
            for name, entry in vendors.items()
        }
        return {**data, "default": default, "vendors": merged}

    def select(self, vendor_id: str) -> SelectedPolicy:
        """The vendor's policy, or the default for an unknown or empty vendor id."""
        name = vendor_id.strip()
        policy = self.vendors.get(name)
        if policy is None:
            return SelectedPolicy(DEFAULT_POLICY_NAME, self.version, self.default)
        return SelectedPolicy(name, self.version, policy)


@dataclass(frozen=True)
class SelectedPolicy:
    """The policy that decides one inspection. ``name`` is a vendor named in the file or
    ``default``: a bounded set, usable as a metrics label."""

    name: str
    version: str
    policy: DecisionPolicy


BUILTIN_POLICY = PolicyFile(version=BUILTIN_VERSION)


def _label_key(label: str) -> str:
    return " ".join(label.split()).casefold()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- loading


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and each bad field."""


def parse_policy(text: str, source: str = "<policy>") -> PolicyFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping with 'version', 'default', 'vendors'")
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PolicyError(f"{source}: {exc.error_count()} invalid field(s): {problems}") from None


def load_policy(path: Path) -> PolicyFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read: {exc}") from None
    return parse_policy(text, str(path))


class PolicyHolder:
    """The policy in force, reloaded from its file when the file changes.

    A file that fails to load or validate leaves the last good policy in force and sets
    ``last_reload_failed`` (and counts ``reload_failures``) until a good file is loaded: that
    flag is what an alert watches. At start a bad file is an error (``PolicyHolder.open``).
    Thread-safe; reading ``current`` never blocks on a reload.
    """

    def __init__(self, policy: PolicyFile = BUILTIN_POLICY, path: Path | None = None) -> None:
        self._policy = policy
        self._path = path
        self._lock = threading.Lock()
        self._fingerprint: tuple[int, int, int] | None = None
        self._digest = ""
        self.last_reload_failed = False
        self.reload_failures = 0
        self.reloads = 0
        self.last_error = ""

    @classmethod
    def open(cls, path: Path | None) -> PolicyHolder:
        """The built-in default policy for no path; the file's policy otherwise (PolicyError
        when it is unusable)."""
        holder = cls(path=path)
        if path is not None:
            holder._load(raise_errors=True)
        return holder

    @property
    def current(self) -> PolicyFile:
        return self._policy

    @property
    def path(self) -> Path | None:
        return self._path

    def select(self, vendor_id: str) -> SelectedPolicy:
        return self._policy.select(vendor_id)

    def reload_if_changed(self) -> bool:
        """Reload when the file's inode, size or modification time changed (a ConfigMap update
        swaps a symlink); True when a new policy took effect."""
        if self._path is None:
            return False
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            self._failed(f"{self._path}: cannot stat: {exc}")
            return False
        if (stat.st_ino, stat.st_size, stat.st_mtime_ns) == self._fingerprint:
            return False
        return self._load(raise_errors=False)

    async def watch(
        self, interval_s: float = 5.0, on_failures: Callable[[int], object] | None = None
    ) -> None:
        """Checks the file every ``interval_s`` (a stat; a reload only when it changed), off the
        event loop, until cancelled; ``on_failures`` gets the number of new failed reloads."""
        failures = self.reload_failures
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.reload_if_changed)
            if self.reload_failures > failures and on_failures is not None:
                on_failures(self.reload_failures - failures)
            failures = self.reload_failures

    def reload(self) -> bool:
        """Reload now; True when a new policy took effect."""
        return self._path is not None and self._load(raise_errors=False)

    def _load(self, raise_errors: bool) -> bool:
        assert self._path is not None
        with self._lock:
            try:
                stat = os.stat(self._path)
                # Remembered even when the file is bad, so an unchanged bad file is reported
                # once, not on every check.
                self._fingerprint = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                raw = self._path.read_bytes()
                digest = hashlib.sha256(raw).hexdigest()
                policy = None
                if digest != self._digest:
                    policy = parse_policy(raw.decode("utf-8"), str(self._path))
            except (OSError, UnicodeDecodeError, PolicyError) as exc:
                if raise_errors:
                    raise PolicyError(str(exc)) from None
                self._failed(str(exc))
                return False
            self.last_reload_failed = False
            self.last_error = ""
            if policy is None:
                return False
            self._policy = policy
            self._digest = digest
            self.reloads += 1
            logger.info("policy %s loaded from %s", policy.version, self._path)
            return True

    def _failed(self, message: str) -> None:
        self.last_reload_failed = True
        self.reload_failures += 1
        self.last_error = message
        logger.error("policy reload failed, keeping version %s: %s", self._policy.version, message)
