"""Export a torch module to ONNX with a dynamic batch dimension."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

from edgewise.errors import ModelError

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 17


def export_onnx(module: nn.Module, sample_shape: tuple[int, ...], path: Path) -> onnx.ModelProto:
    """TorchScript-based exporter first (fast, folds BatchNorm in eval mode), dynamo exporter as fallback."""
    module = module.eval()
    dummy = torch.zeros((1, *sample_shape))
    path = Path(path)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception:  # noqa: BLE001 - fall back to the other exporter, then report its error
            try:
                batch = torch.export.Dim("batch")
                torch.onnx.export(module, (dummy,), str(path), dynamo=True, opset_version=18,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: batch},))
            except Exception as e:
                raise ModelError(f"cannot export {type(module).__name__} to ONNX: {e}") from e
    return onnx.load(str(path))


def import_torch(path: Path, sample_shape: tuple[int, ...], out: Path, arch: str | None = None,
                 classes: int | None = None, width: float = 1.0, trust_pickle: bool = False) -> onnx.ModelProto:
    """Export a torch model to ONNX: a state_dict for a zoo architecture (`arch`, loaded with
    `weights_only`, which runs no code from the file), or, with `trust_pickle`, a whole pickled
    `nn.Module` (saved with `torch.save(model, path)`: unpickling runs code from the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a full pickle (or not a torch file at all)
        if not trust_pickle:
            raise ModelError(f"{path} is not a plain state_dict ({type(e).__name__}); if it is a whole pickled "
                             "module, loading it runs code from the file: pass --trust-pickle only if you "
                             "trust where it came from, or save model.state_dict() and pass --arch") from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # torch/pickle raise many unrelated types for a bad file
            raise ModelError(f"{path}: cannot load a torch model ({type(e2).__name__}: {str(e2)[:200]})") from e2
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None:
            raise ModelError(f"{path} holds a state_dict (weights only): name its zoo architecture with --arch "
                             "(and --classes, --width)")
        from edgewise.zoo.models import build

        head = [v for k, v in obj.items() if k.endswith("weight") and v.ndim == 2]
        module = build(arch, sample_shape, classes or (int(head[-1].shape[0]) if head else 2), width)
        try:
            module.load_state_dict(obj)
        except RuntimeError as e:
            raise ModelError(f"{path}: the weights do not fit {arch} (width {width}): "
                             f"{str(e).splitlines()[0][:200]}") from e
    else:
        module = obj
    if not isinstance(module, nn.Module):
        raise ModelError(f"{path}: holds a {type(module).__name__}, not an nn.Module or a state_dict")
    try:
        with torch.no_grad():
            module.eval()(torch.zeros((1, *sample_shape)))
    except Exception as e:
        raise ModelError(f"{path}: the module does not accept input of shape {(1, *sample_shape)}: "
                         f"{str(e).splitlines()[0][:200]}") from e
    return export_onnx(module, sample_shape, out)
