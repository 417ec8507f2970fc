"""Measurement: accuracy or fidelity, latency percentiles, throughput, size, memory, MACs and energy."""

from edgewise.profile.macs import count_macs
from edgewise.profile.measure import (
    Fidelity,
    LatencyStats,
    evaluate,
    measure_latency,
    measure_memory,
    measure_throughput,
    run_model,
)
from edgewise.profile.runtime import make_session

__all__ = [
    "Fidelity",
    "LatencyStats",
    "count_macs",
    "evaluate",
    "make_session",
    "measure_latency",
    "measure_memory",
    "measure_throughput",
    "run_model",
]
