"""Integer requantization, shared bit for bit by the C kernels and the NumPy reference.

A real multiplier M > 0 becomes (m, s) with m a Q31 int32 in [2^30, 2^31) and M = m * 2^-s. Applying it
to an int32 accumulator is one 64-bit multiply and a shift with round-half-to-even:
    v = acc * m;  q = v >> s;  r = v - (q << s);  q += (r > 2^(s-1)) or (r == 2^(s-1) and q odd)
Half-to-even is ONNX QuantizeLinear's rounding: averaging pools land exactly on .5 often, and
rounding those up instead put 10% of a pooled tensor one step away from ONNX Runtime.
No floating point is involved at run time.
"""

from __future__ import annotations

import math

import numpy as np

from edgewise.errors import CodegenError

MAX_SHIFT = 62


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(m, s) with m in [2^30, 2^31) and real == m * 2^-s to within 2^-31 relative."""
    if not real > 0 or not math.isfinite(real):
        raise CodegenError(f"requantization multiplier must be positive and finite, got {real}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m = int(round(mantissa * (1 << 31)))
    if m == 1 << 31:  # rounding carried into the next power of two
        m //= 2
        exponent += 1
    shift = 31 - exponent
    if shift > MAX_SHIFT:  # vanishingly small multiplier: everything rounds to zero
        return 0, 1
    if shift < 1:
        raise CodegenError(f"requantization multiplier {real} is too large (>= 2^30)")
    return m, shift


def requantize(acc: np.ndarray, m: np.ndarray | int, s: np.ndarray | int) -> np.ndarray:
    """The C kernels' `ew_requant` on arrays: int64 product, shift, round half to even."""
    v = np.asarray(acc, dtype=np.int64) * np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    q = v >> s
    r = v - (q << s)
    half = np.int64(1) << (s - 1)
    return q + ((r > half) | ((r == half) & ((q & 1) == 1))).astype(np.int64)


def saturate_int8(x: np.ndarray, lo: int = -128, hi: int = 127) -> np.ndarray:
    return np.clip(x, lo, hi).astype(np.int8)
