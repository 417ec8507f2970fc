"""Split a bundle's model at an intermediate tensor: the tail becomes a bundle of its own.

This serves features-mode escalation: the device runs the whole model, and when it is unsure it sends
the embedding at the split point upstream instead of the raw input; the tier above runs the tail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgewise.bundle.manifest import Manifest
from edgewise.bundle.pack import verify_bundle, write_bundle
from edgewise.errors import BundleError
from edgewise.fsutil import check_out
from edgewise.modelio import embedding_tensor, inputs, load_onnx, outputs, split_at


def tail_name(model: str) -> str:
    return f"{model}-tail"


def split_bundle(bundle: Path, out: Path, at: str | None = None) -> Manifest:
    """Write the tail of `bundle`'s model (from tensor `at`, default the penultimate embedding) to `out`."""
    check_out(out, BundleError, inputs=(bundle,))
    manifest = verify_bundle(bundle)
    model = load_onnx(Path(bundle) / "model.onnx")
    at = at or embedding_tensor(model)
    tail = split_at(model, at)
    spec = inputs(tail)[0]
    tail_manifest = replace(
        manifest, name=tail_name(manifest.name), inputs=[spec.as_dict()],
        outputs=[s.as_dict() for s in outputs(tail)], preprocessing={},
        recipe=[*manifest.recipe, {"pass": "split", "at": at}], files={}, created="",
        artifacts={"split": {"from": manifest.name, "version": manifest.version, "at": at,
                             "features": spec.as_dict()}})
    write_bundle(out, tail_manifest, {"model.onnx": tail.SerializeToString()})
    return tail_manifest
