"""What a search is asked (SearchOptions) and what it found (SearchResult)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgewise.optimize.candidates import Candidate
from edgewise.profile.fidelity import Task
from edgewise.targets import TargetProfile

Log = Callable[[str], None]
# (what, done, total): a step with a known amount of work; the CLI draws it as a bar with an ETA.
Progress = Callable[[str, int, int], None]



@dataclass
class SearchOptions:
    max_accuracy_drop: float = 1.0  # points of the task's fidelity metric on the validation split
    calibration_samples: int = 256
    latency_runs: int = 100
    torch_passes: bool = True  # structured pruning and distillation, when a torch model is at hand
    prune_keep: float = 0.65
    finetune_epochs: int = 10
    finetune_min_steps: int = 300
    distill_epochs: int = 40
    distill_min_steps: int = 600
    sensitivity_max_layers: int = 48
    measure_memory: bool = True
    # Glob patterns over candidate ids (e.g. "baseline-int8-percentile*", "pruned-*"): run only those
    # passes. Empty: try everything. The starting model is always measured as the reference.
    only: tuple[str, ...] = ()
    task: str | None = None  # None: inferred from the starting model's outputs
    time_budget_s: float | None = None  # None: no limit
    # Hard budgets the user set (the profile's own latency figure is a soft preference).
    max_latency_ms: float | None = None
    max_ram_bytes: int | None = None
    max_flash_bytes: int | None = None
    # An agent started with --allow-bench (http://device:8080): latency is measured there, not here.
    measure_on: str | None = None

    def within_tolerance(self, drop_points: float) -> bool:
        """A fidelity drop the user accepts (a drop of exactly the tolerance is one, despite float rounding)."""
        return drop_points <= self.max_accuracy_drop + 1e-9

    def wants(self, candidate_id: str) -> bool:
        return not self.only or any(fnmatch.fnmatch(candidate_id, p) for p in self.only)

    def wants_parent(self, parent: str) -> bool:
        return not self.only or any(p.startswith(parent) or p.startswith("*") for p in self.only)


@dataclass
class SearchResult:
    target: TargetProfile
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    why: str
    sensitivity: dict[str, float] = field(default_factory=dict)
    exclusions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    task: Task | None = None
    not_tried: list[str] = field(default_factory=list)
    measure_on: str | None = None  # the device latency was measured on (SearchOptions.measure_on)
    preparation: str = ""
