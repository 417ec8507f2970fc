"""The deployable unit: model.onnx + manifest.json (+ extras), every file's sha256 in the manifest."""

from edgewise.bundle.manifest import FORMAT_VERSION, Manifest
from edgewise.bundle.pack import read_bundle, verify_bundle, write_bundle

__all__ = ["FORMAT_VERSION", "Manifest", "read_bundle", "verify_bundle", "write_bundle"]
