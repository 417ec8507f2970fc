import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgewise.errors import DataError, ModelError
from edgewise.zoo import ARCHITECTURES, build, count_params
from edgewise.zoo.export import export_onnx, import_torch
from edgewise.zoo.train import predict_logits

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "dscnn": (1, 16, 16), "cnn1d": (6, 100),
          "mobilenetv3-small": (3, 64, 64), "tinydet": (3, 32, 32), "autoencoder": (60,)}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_exports_to_onnx_matching_torch(arch, tmp_path):
    # Prepare
    torch.manual_seed(0)
    model = build(arch, SHAPES[arch], 5).eval()
    x = np.random.default_rng(0).standard_normal((3, *SHAPES[arch])).astype(np.float32)
    # Execute
    export_onnx(model, SHAPES[arch], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    # Assert: dynamic batch, same numbers as torch (a detector: boxes + 5 class scores per 8x8 cell; an
    # autoencoder: its residual, one value per feature)
    assert out.shape == {"tinydet": (3, 4 + 5, 16), "autoencoder": (3, 60)}.get(arch, (3, 5))
    np.testing.assert_allclose(out, predict_logits(model, x), rtol=1e-3, atol=1e-4)


def test_mobilenetv3_small_has_its_signature_blocks():
    m = build("mobilenetv3-small", (3, 224, 224), 1000)
    kinds = {type(mod).__name__ for mod in m.modules()}
    assert {"InvertedResidual", "SqueezeExcite", "Hardswish", "Hardsigmoid"} <= kinds
    assert 1.4e6 < count_params(m) < 2.6e6, "about MobileNetV3-small's 2.5M params at 1000 classes"


def test_width_scales_parameters():
    assert count_params(build("cnn", (1, 8, 8), 10, 0.5)) < count_params(build("cnn", (1, 8, 8), 10)) / 3


def test_wrong_input_rank_and_unknown_model():
    with pytest.raises(DataError, match="image samples"):
        build("cnn", (6, 100), 4)
    with pytest.raises(ModelError, match="unknown model"):
        build("resnet9000", (1, 8, 8), 4)


def test_import_a_pickled_torch_module_only_when_trusted(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    torch.save(model, tmp_path / "m.pt")
    with pytest.raises(ModelError, match="--trust-pickle"):  # unpickling would run code from the file
        import_torch(tmp_path / "m.pt", (3, 4), tmp_path / "m.onnx")
    onnx_model = import_torch(tmp_path / "m.pt", (3, 4), tmp_path / "m.onnx", trust_pickle=True)
    assert (tmp_path / "m.onnx").is_file() and onnx_model.graph.node
    with pytest.raises(ModelError, match="does not accept input"):
        import_torch(tmp_path / "m.pt", (5,), tmp_path / "y.onnx", trust_pickle=True)


def test_import_a_state_dict_for_a_zoo_architecture(tmp_path):
    zoo_model = build("mlp", (1, 8, 8), 10, width=0.5)
    torch.save(zoo_model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelError, match="--arch"):
        import_torch(tmp_path / "sd.pt", (1, 8, 8), tmp_path / "x.onnx")
    m = import_torch(tmp_path / "sd.pt", (1, 8, 8), tmp_path / "x.onnx", arch="mlp", width=0.5)
    assert m.graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 10  # classes read from the weights
    with pytest.raises(ModelError, match="do not fit mlp"):
        import_torch(tmp_path / "sd.pt", (1, 8, 8), tmp_path / "y.onnx", arch="mlp", width=1.0)
