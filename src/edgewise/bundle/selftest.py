"""Golden input/output pairs inside the bundle: a device runs them after install, before switching.

They catch a model that loads but computes something else on this device (a corrupt weight that still
hashes as shipped is impossible, but a broken runtime, a wrong execution provider or a bad kernel is not).
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bundle.pack import verify_bundle, write_bundle
from edgewise.errors import BundleError
from edgewise.npyio import HEADER_LOCK

GOLDEN = "selftest.npz"


def _inputs(manifest: Any, n: int, seed: int) -> np.ndarray:
    spec = manifest.inputs[0]
    shape = [n] + [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"][1:]]
    lo, hi = manifest.preprocessing.get("input_range", [0.0, 1.0])
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(spec.get("dtype", "float32"))


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    from edgewise.profile.runtime import make_session

    s = make_session(Path(model).read_bytes(), threads=1)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def add_golden(bundle: Path, n: int = 4, seed: int = 0) -> Path:
    """Rewrite `bundle` with `selftest.npz` (inputs within the trained range and the model's outputs)."""
    manifest = verify_bundle(bundle)
    if manifest.files.get(GOLDEN):
        return Path(bundle)
    x = _inputs(manifest, n, seed)
    y = _run(Path(bundle) / "model.onnx", x)
    buf = io.BytesIO()
    np.savez(buf, inputs=x, outputs=y)
    files: dict[str, bytes | Path] = {name: Path(bundle) / name for name in manifest.files}
    files[GOLDEN] = buf.getvalue()
    # write_bundle copies every file into a sibling before swapping it in, so reading from `bundle` is safe
    return write_bundle(bundle, replace(manifest, files={}), files)


def check_golden(bundle: Path, outputs_of: Any) -> dict[str, Any]:
    """Run the golden inputs through `outputs_of(x) -> y`; BundleError when the answers differ.

    Same top-1 class on every pair and values within 2% of the output range: tight enough to catch a
    wrong model or kernel, loose enough for another CPU's float rounding or an int8 step.
    """
    path = Path(bundle) / GOLDEN
    if not path.is_file():
        raise BundleError("bundle has no golden pairs (selftest.npz): cannot self-test")
    with HEADER_LOCK, np.load(path, allow_pickle=False) as z:
        x, want = z["inputs"], z["outputs"]
    got = np.asarray(outputs_of(x))
    if got.shape != want.shape:
        raise BundleError(f"self-test: output shape {got.shape} != golden {want.shape}")
    err = float(np.abs(got - want).max())
    tol = 0.02 * float(np.ptp(want) or 1.0)
    same_class = bool((got.reshape(len(x), -1).argmax(1) == want.reshape(len(x), -1).argmax(1)).all())
    if err > tol or not same_class:
        raise BundleError(f"self-test failed: max |diff| {err:.4g} (tolerance {tol:.4g}), "
                          f"same top-1 on every pair: {same_class}")
    return {"pairs": len(x), "max_abs_diff": err}
