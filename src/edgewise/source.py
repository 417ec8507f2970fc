"""The starting model: where it came from, and how it is made to agree with the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgewise.data import Splits
from edgewise.errors import DataError, ModelError
from edgewise.modelio import load_onnx, outputs, pin_input_shape, sample_shape
from edgewise.profile.feeds import Feeder, model_inputs


@dataclass
class Source:
    """The starting model: fp32 ONNX (input shape pinned), and the torch module when it came from the zoo."""

    name: str
    model: onnx.ModelProto
    labels: list[str]
    preprocessing: dict[str, Any]
    trained: Any = None  # edgewise.zoo.TrainedModel; typed loosely so the core imports no torch
    postprocessing: dict[str, Any] = field(default_factory=dict)  # what training declared (an anomaly threshold)


def load_source(path: Path) -> Source:
    """A zoo training directory (torch passes available), a bundle directory, or an .onnx file."""
    path = Path(path)
    if path.is_dir() and (path / "train.json").is_file():
        from edgewise.zoo import load_trained

        tm = load_trained(path)
        return Source(tm.arch, load_onnx(path / "model.onnx"), tm.labels, tm.preprocessing, tm, tm.postprocessing)
    if path.is_dir() and (path / "manifest.json").is_file():
        from edgewise.bundle import read_bundle

        man = read_bundle(path)
        model = load_onnx(path / "model.onnx")
        _register_bundle_ir(path, model)
        return Source(man.name, model, man.labels, man.preprocessing, postprocessing=dict(man.postprocessing or {}))
    if path.suffix.lower() in (".pt", ".pth"):
        raise ModelError(f"{path}: convert torch models first with `edgewise import {path} --input-shape ...`")
    # "model.onnx" says little: a model kept as <name>/model.onnx is called <name>
    name = path.parent.name if path.stem == "model" and path.parent.name not in ("", ".") else path.stem
    return Source(name, load_onnx(path), [], {})


def _register_bundle_ir(bundle: Path, model: onnx.ModelProto) -> None:
    """A bundle whose model runs as an OpenVINO IR carries it beside the ONNX (model.xml, model.bin): keep it
    in this process under the key the model names, so the model runs here as it runs on the device (`bench`
    on a bundle, a bundle re-optimized), not only in the process that built it."""
    from edgewise.profile.openvino import ir_key, register_ir

    want = ir_key(model)
    if want is None:
        return
    xml, weights = bundle / "model.xml", bundle / "model.bin"
    if not (xml.is_file() and weights.is_file()):
        raise ModelError(f"{bundle}: the model runs as an OpenVINO IR, but model.xml or model.bin is missing")
    if register_ir(xml.read_bytes(), weights.read_bytes()) != want:
        raise ModelError(f"{bundle}: model.xml and model.bin are not the IR the model names")


def fit_data(source: Source, splits: Splits) -> tuple[Source, Splits]:
    """Make model and data agree: pin the model's open dims to the data, or view the data in the model's shape.

    Named (multi-input) data is checked input by input and the model keeps its dynamic axes.
    """
    if splits.train.named:
        Feeder(model_inputs(source.model), splits.train)
        if not source.labels:
            source.labels = splits.train.labels
        if not source.preprocessing:
            source.preprocessing = splits.train.preprocessing
        return source, splits
    if "spectral" in source.preprocessing and len(splits.train.sample_shape) == 2:
        splits = through_spectral(source.preprocessing, splits)
    shape = sample_shape(source.model)
    data_shape = splits.train.sample_shape
    if all(isinstance(d, int) and d > 0 for d in shape):
        shape_i = tuple(int(d) for d in shape)
        splits = Splits(*(p.reshaped(shape_i) for p in (splits.train, splits.val, splits.test)))
    else:
        source.model = pin_input_shape(source.model, data_shape)
    out = outputs(source.model)
    classes = out[0].shape[-1] if out and out[0].shape and isinstance(out[0].shape[-1], int) else None
    y = splits.train.y
    if classes and y is not None and int(y.max()) >= classes:
        raise DataError(f"data has labels up to {int(y.max())} but the model outputs {classes} classes")
    if not source.labels:
        source.labels = splits.train.labels or ([str(i) for i in range(classes)] if classes else [])
    if not source.preprocessing:
        source.preprocessing = splits.train.preprocessing
    return source, splits


def through_spectral(preprocessing: dict[str, Any], splits: Splits) -> Splits:
    """Raw sensor windows through the spectral front end `preprocessing` declares (with its fitted
    standardization); each part then records `preprocessing` as what was applied."""
    from edgewise.data import Dataset
    from edgewise.media.spectral import SpectralSpec, as_logged, features

    spec = SpectralSpec.from_dict(preprocessing["spectral"])

    def conv(ds: Dataset) -> Dataset:
        return Dataset(ds.name, features(spec, as_logged(ds.x, ds.preprocessing)), ds.y, ds.labels,
                       {**preprocessing}, groups=ds.groups)

    return Splits(conv(splits.train), conv(splits.val), conv(splits.test))
