"""The bundle manifest: what the model is, how it was made, what it measured, and every file's hash."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgewise.bundle.version import parse as parse_version
from edgewise.errors import BundleError

FORMAT_VERSION = 1
_TYPES = {"name": str, "version": str, "target": str, "inputs": list, "outputs": list, "labels": list,
          "preprocessing": dict, "precision": str, "recipe": list, "metrics": dict, "files": dict, "artifacts": dict,
          "created": str, "format_version": int, "task": str, "postprocessing": dict, "runtime": dict}
# Optional fields added since format 1; omitted from the JSON (and the signed bytes) while empty.
_LATER_FIELDS = ("task", "postprocessing", "runtime")


@dataclass
class Manifest:
    name: str
    version: str
    target: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    labels: list[str]
    preprocessing: dict[str, Any]
    precision: str
    recipe: list[dict[str, Any]]
    metrics: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What later stages added: e.g. "c" (generated C sources and their RAM/flash figures).
    artifacts: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    # What the outputs mean (classification, detection, segmentation, ctc, regression): the agent answers
    # with labels and scores only for classifiers. Added after format 1 was fixed: left out of the signed
    # bytes while empty, so older bundles' signatures still verify.
    task: str = ""
    # How raw outputs become answers (edgewise.media.answer): class names and top-k, or boxes after decode
    # and NMS. Also left out of the signed bytes while empty.
    postprocessing: dict[str, Any] = field(default_factory=dict)
    # Which runtime the model was chosen on and how it was measured: {"engine": "openvino", "device": "CPU",
    # "precision": "f32", "threads": 1}. Empty: ONNX Runtime with the target's execution providers. The
    # model file is ONNX either way, so a device without the engine falls back to ONNX Runtime's CPU.
    runtime: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in _TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise BundleError(f"manifest field {name!r} must be {kind.__name__}, got {type(value).__name__}")
        for name in ("inputs", "outputs"):
            for spec in getattr(self, name):
                if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(
                        spec.get("shape"), list):
                    raise BundleError(f"manifest {name} entries need a name (string) and a shape (list)")
        if not all(isinstance(label, str) for label in self.labels):
            raise BundleError("manifest labels must be strings")
        parse_version(self.version)

    def _fields(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _LATER_FIELDS:
            if not data[key]:
                del data[key]
        return data

    def canonical_bytes(self) -> bytes:
        """Sorted keys, no whitespace, UTF-8: the exact bytes a signature covers."""
        return json.dumps(self._fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def to_json(self) -> str:
        return json.dumps(self._fields(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"manifest.json is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise BundleError("manifest.json must hold a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"unsupported bundle format {data.get('format_version')!r} (this edgewise reads "
                              f"{FORMAT_VERSION})")
        known = set(cls.__dataclass_fields__)
        optional = ("files", "artifacts", "created", "format_version", *_LATER_FIELDS)
        missing = [k for k in known if k not in data and k not in optional]
        if missing:
            raise BundleError(f"manifest.json lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})
