"""A bundled vibration set for predictive maintenance: a motor's 3-axis accelerometer (x, y radial, z axial)
at 1 kHz, synthesized from the physics of rotating machines, seeded, so it is the same everywhere.

Normal running: shaft harmonics (1x, 2x, and a 7-blade pass), broadband structural noise and sensor noise,
at a shaft speed that drifts and changes (15-35 Hz) with the load, recording by recording. Faults, each
with a severity drawn per recording (some subtle):

    imbalance       the 1x radial component grows, 90 degrees apart on x and y
    misalignment    a strong 2x, above all on the axial axis
    looseness       harmonics up to 10x and a 0.5x sub-harmonic; the vertical axis is truncated
    bearing_outer   impacts at the outer-race frequency (3.58x) ringing a 320 Hz resonance
    bearing_inner   impacts at the inner-race frequency (5.42x), modulated by the shaft, ringing at 380 Hz

Windows of 1 s every 0.5 s. A model of "normal" trains on the normal recordings only: the test split holds
six normal recordings it never saw and every fault recording (`test_groups`).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from edgewise.data.dataset import Dataset

RATE = 1000
CHANNELS = ["acc_x", "acc_y", "acc_z"]
LABELS = ["normal", "imbalance", "misalignment", "looseness", "bearing_outer", "bearing_inner"]
FAULT_ORDERS = {"bearing_outer": (3.58, 320.0), "bearing_inner": (5.42, 380.0)}


def _impacts(t: np.ndarray, phase: np.ndarray, order: float, ring_hz: float, amp: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """A decaying `ring_hz` ringing at each impact, impacts `order` times per shaft turn (with jitter)."""
    out = np.zeros_like(t)
    turns = phase / (2 * np.pi) * order
    hits = np.flatnonzero(np.diff(np.floor(turns)) > 0) + 1
    ring = np.arange(int(0.04 * RATE)) / RATE
    kernel = np.exp(-ring * 120.0) * np.sin(2 * np.pi * ring_hz * ring)
    for h in hits:
        h = min(len(t) - 1, h + int(rng.integers(0, 3)))
        n = min(len(kernel), len(t) - h)
        out[h : h + n] += amp[h] * kernel[:n] * rng.uniform(0.7, 1.3)
    return out


def recording(kind: str, seconds: float, seed: int, severity: float = 1.0) -> np.ndarray:
    """[3, seconds * RATE] accelerations in g for one run of the motor, normal or with a fault."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    base = rng.uniform(15.0, 35.0)
    speed = base * (1 + 0.08 * np.sin(2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 6.3)))
    if rng.random() < 0.5:  # a load step part-way through
        speed = speed * np.where(t > rng.uniform(0.3, 0.7) * seconds, rng.uniform(0.85, 1.15), 1.0)
    phase = 2 * np.pi * np.cumsum(speed) / RATE
    a1, a2 = rng.uniform(0.15, 0.25), rng.uniform(0.03, 0.06)
    th = rng.uniform(0, 2 * np.pi, 4)
    x = a1 * np.cos(phase) + a2 * np.cos(2 * phase + th[0]) + 0.03 * np.cos(7 * phase + th[1])
    y = a1 * np.sin(phase) + a2 * np.sin(2 * phase + th[2]) + 0.03 * np.sin(7 * phase + th[3])
    z = 0.05 * np.cos(phase + th[0]) + 0.3 * a2 * np.cos(2 * phase + th[1])
    sig = np.stack([x, y, z])
    # structural noise: white noise through a gentle low-pass (the frame's response), plus sensor noise
    sig += lfilter([0.7], [1.0, -0.3], rng.normal(0, 0.05, (3, n)), axis=1) + rng.normal(0, 0.01, (3, n))
    s = severity
    if kind == "imbalance":
        extra = rng.uniform(1.0, 2.5) * s * a1
        sig[0] += extra * np.cos(phase)
        sig[1] += extra * np.sin(phase)
    elif kind == "misalignment":
        amp = rng.uniform(0.08, 0.2) * s
        sig[2] += amp * np.cos(2 * phase) + 0.5 * amp * np.cos(phase)
        sig[0] += 0.6 * amp * np.cos(2 * phase + 0.5)
    elif kind == "looseness":
        amp = rng.uniform(0.02, 0.05) * s
        for k in range(1, 11):
            sig[1] += amp * np.cos(k * phase + rng.uniform(0, 2 * np.pi)) / np.sqrt(k)
        sig[1] += 1.5 * amp * np.cos(0.5 * phase)
        lim = np.quantile(sig[1], 0.9)
        sig[1] = np.minimum(sig[1], lim)
    elif kind in FAULT_ORDERS:
        order, ring_hz = FAULT_ORDERS[kind]
        amp = rng.uniform(0.15, 0.4) * s * np.ones(n)
        if kind == "bearing_inner":
            amp = amp * (0.6 + 0.4 * np.cos(phase))
        hit = _impacts(t, phase, order, ring_hz, amp, rng)
        sig[0] += hit
        sig[1] += 0.7 * hit
        sig[2] += 0.3 * hit
    elif kind != "normal":
        raise ValueError(f"unknown machine state {kind!r}")
    return sig.astype(np.float32)


def _windows(sig: np.ndarray, window: int, stride: int) -> np.ndarray:
    return np.stack([sig[:, s : s + window] for s in range(0, sig.shape[1] - window + 1, stride)])


def vibration(seed: int = 0, normal_runs: int = 40, fault_runs: int = 3) -> Dataset:
    """Windows of 40 normal runs (20 s) and 3 runs of each fault (12 s), labelled by machine state."""
    xs, ys, groups = [], [], []
    runs = [("normal", i, 20.0) for i in range(normal_runs)]
    runs += [(kind, i, 12.0) for kind in LABELS[1:] for i in range(fault_runs)]
    for n, (kind, i, seconds) in enumerate(runs):
        sig = recording(kind, seconds, seed * 1000 + n, severity=np.linspace(0.6, 1.2, fault_runs)[i % fault_runs]
                        if kind != "normal" else 1.0)
        w = _windows(sig, RATE, RATE // 2)
        xs.append(w)
        ys += [LABELS.index(kind)] * len(w)
        groups += [f"{kind}{i}"] * len(w)
    held = [f"normal{i}" for i in range(normal_runs - 6, normal_runs)]
    held += [f"{kind}{i}" for kind in LABELS[1:] for i in range(fault_runs)]
    pre = {"layout": "NCT", "channels": CHANNELS, "rate_hz": float(RATE), "window_ms": 1000.0, "stride_ms": 500.0,
           "normal_class": "normal", "test_groups": held, "source": "edgewise synthetic motor vibration"}
    ds = Dataset("vibration", np.concatenate(xs), np.array(ys), list(LABELS), pre)
    ds.groups = np.array(groups)
    return ds


def write_log(path: str, kinds: list[tuple[str, float]], seed: int = 7) -> None:
    """A logger CSV (`timestamp,acc_x,acc_y,acc_z,label`) of consecutive runs, e.g. [("normal", 30)]: what a
    user's own recording looks like, to try the sensor-log path on."""
    t0 = 0.0
    with open(path, "w") as f:
        f.write("timestamp," + ",".join(CHANNELS) + ",label\n")
        for k, (kind, seconds) in enumerate(kinds):
            sig = recording(kind, seconds, seed + k)
            for i in range(sig.shape[1]):
                f.write(f"{t0 + i / RATE:.3f},{sig[0, i]:.5f},{sig[1, i]:.5f},{sig[2, i]:.5f},{kind}\n")
            t0 += sig.shape[1] / RATE


__all__ = ["CHANNELS", "LABELS", "RATE", "recording", "vibration", "write_log"]
