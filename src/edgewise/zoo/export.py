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


def import_torch(path: Path, sample_shape: tuple[int, ...], out: Path) -> onnx.ModelProto:
    """Export a whole pickled `nn.Module` (saved with `torch.save(model, path)`) to ONNX.

    Unpickling runs code from the file: only import modules you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch/pickle raise many unrelated types for a bad file
        raise ModelError(f"{path}: cannot load a torch model ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(module, nn.Module):
        raise ModelError(f"{path}: holds a {type(module).__name__}, not an nn.Module (save the whole module, "
                         "not a state_dict)")
    try:
        with torch.no_grad():
            module.eval()(torch.zeros((1, *sample_shape)))
    except Exception as e:
        raise ModelError(f"{path}: the module does not accept input of shape {(1, *sample_shape)}: "
                         f"{str(e).splitlines()[0][:200]}") from e
    return export_onnx(module, sample_shape, out)
