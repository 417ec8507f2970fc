"""Measurement: accuracy or fidelity, latency percentiles, throughput, size, memory, MACs and energy."""

from edgewise.profile.fidelity import Fidelity, Task, fidelity, infer_task
from edgewise.profile.macs import count_macs
from edgewise.profile.measure import (
    LatencyStats,
    evaluate,
    measure_latency,
    measure_memory,
    measure_throughput,
    model_memory,
    run_model,
    run_outputs,
)
from edgewise.profile.runtime import fallback_note, make_session, measured_on, running_on

__all__ = [
    "Fidelity",
    "LatencyStats",
    "Task",
    "count_macs",
    "evaluate",
    "fidelity",
    "infer_task",
    "fallback_note",
    "make_session",
    "measured_on",
    "running_on",
    "measure_latency",
    "measure_memory",
    "measure_throughput",
    "model_memory",
    "run_model",
    "run_outputs",
]
