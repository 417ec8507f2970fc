"""Third-party graphs for robustness tests and benchmarks, built offline at run time.

Real architectures from installed packages (torchvision's classifiers, SSDLite and LR-ASPP; a YOLOv8n
from the ultralytics package's model yaml), PaddleOCR's pretrained models from the rapidocr wheel, and
small hand-made graphs for the shapes the others lack: state inputs and an int64 scalar, an attention
mask, Loop/If, external data, an old opset, an operator nothing runs. Weights are random unless
pretrained ones ship inside a package: the corpus checks robustness and speed, not accuracy.

`build(name, directory)` writes the model (and, for models with several inputs, an .npz of samples
keyed by input name) and returns the model path and the `--data` to optimize it with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

_TORCHVISION_SHIM = None


@dataclass(frozen=True)
class CorpusModel:
    name: str
    task: str  # what the fidelity inference should find
    what: str
    builder: Callable[[Path], tuple[Path, str]]
    mcu: bool = False  # a model class that plausibly targets a 256 KB microcontroller
    pretrained: bool = False
    expect_error: str | None = None  # the model is meant to be refused with this in the message
    task_flag: str | None = None  # what its user would pass as --task (vector outputs read as classifiers)


def import_torchvision():  # type: ignore[no-untyped-def]
    """torchvision, importable beside a CPU-only torch.

    PyPI's torchvision wheel links its compiled ops (NMS, RoIAlign) against CUDA torch libraries, which a
    CPU build lacks; torchvision then loads without them, except that it registers a fake kernel for
    `nms`/`qnms` unconditionally. Declaring those two schemas first lets it import; the architectures are
    plain PyTorch, and nothing here calls the compiled ops.
    """
    global _TORCHVISION_SHIM
    import torch

    if _TORCHVISION_SHIM is None:
        try:
            import torchvision  # noqa: F401 - a working install needs no help
        except RuntimeError:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            _TORCHVISION_SHIM = lib
            import sys

            for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[mod]
        else:
            _TORCHVISION_SHIM = False
    import torchvision

    if _TORCHVISION_SHIM:  # ultralytics' validation calls NMS: give it one in plain torch
        import torchvision.ops.boxes

        torchvision.ops.nms = torchvision.ops.boxes.nms = _nms
    return torchvision


def _nms(boxes, scores, iou_threshold: float):  # type: ignore[no-untyped-def]
    """torchvision.ops.nms in plain torch: indices of the boxes kept, highest score first."""
    import torch

    order, keep = scores.argsort(descending=True), []
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    while order.numel():
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int = 17,  # type: ignore[no-untyped-def]
            dynamic: dict | None = None) -> Path:
    import torch

    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=opset,
                          dynamic_axes=dynamic, dynamo=False)
    return path


def _seeded() -> None:
    import torch

    torch.manual_seed(0)


def _bn_from_photos(module, size: int, n: int = 32) -> None:  # type: ignore[no-untyped-def]
    """Set every BatchNorm's statistics from real photos (not the ones the corpus scores on), as training
    would. At their initial statistics (mean 0, variance 1) a deep random detector's signal fades layer by
    layer until its answers no longer depend on the image: YOLOv8n's outputs varied by 2e-8 of their size
    across photos, and SSDLite's by 7e-8, so any candidate "agreed" with them."""
    import torch

    from edgewise.data.photos import photos

    x = torch.from_numpy(photos(size, n=n, seed=11).x)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    module.train()
    with torch.no_grad():
        for i in range(0, n, 8):
            module(x[i:i + 8])
    module.eval()


def _classifier(factory: Callable[[], object], size: int) -> Callable[[Path], tuple[Path, str]]:
    def build(d: Path) -> tuple[Path, str]:
        import torch

        _seeded()
        m = factory()
        return _export(m, (torch.zeros(1, 3, size, size),), d / "model.onnx", ["image"], ["logits"],
                       dynamic={"image": {0: "batch"}, "logits": {0: "batch"}}), f"photos:{size}"

    return build


def _mobilenetv3(d: Path) -> tuple[Path, str]:
    import_torchvision()
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    return _classifier(lambda: MobileNetV3(setting, last, num_classes=10), 96)(d)


def _efficientnet(d: Path) -> tuple[Path, str]:
    import_torchvision()
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.5, depth_mult=0.5)
    return _classifier(lambda: EfficientNet(setting, 0.2, last_channel=last, num_classes=10), 64)(d)


def _resnet(d: Path) -> tuple[Path, str]:
    import_torchvision()
    from torchvision.models.resnet import BasicBlock, ResNet

    return _classifier(lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), 64)(d)


def _shufflenet(d: Path) -> tuple[Path, str]:
    tv = import_torchvision()
    return _classifier(lambda: tv.models.shufflenet_v2_x0_5(num_classes=10), 64)(d)


def _regnet(d: Path) -> tuple[Path, str]:
    import_torchvision()
    from torchvision.models.regnet import BlockParams, RegNet

    # RegNetX-200MF's design space parameters (Radosavovic et al., 2020)
    params = BlockParams.from_init_params(depth=13, w_0=24, w_a=36.44, w_m=2.49, group_width=8)
    return _classifier(lambda: RegNet(params, num_classes=10), 64)(d)


def _yolov8n(d: Path) -> tuple[Path, str]:
    return yolov8n_onnx(d / "model.onnx", 160), "photos:160"


def _ultralytics_offline() -> None:
    """ultralytics' settings for a machine without network: its own config dir, no downloads, quiet."""
    import tempfile

    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="edgewise-yolo-"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _export_yolo(model, path: Path, size: int) -> Path:  # type: ignore[no-untyped-def]
    """An ultralytics detector exported with one [1, 4 + classes, A] tensor: boxes (cx, cy, w, h) + scores."""
    import torch

    head = model.model[-1]
    head.export, head.format = True, "onnx"
    return _export(model, (torch.zeros(1, 3, size, size),), path, ["images"], ["output0"])


def yolov8n_onnx(path: Path, size: int) -> Path:
    """YOLOv8n from the ultralytics package's own model yaml (no weights are fetched), SIZE x SIZE."""
    _ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel

    _seeded()
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    _bn_from_photos(model, size)
    return _export_yolo(model, path, size)


YOLO_SHAPES_EPOCHS = 40


def _yolov8n_shapes(d: Path) -> tuple[Path, str]:
    return yolov8n_shapes_onnx(d / "model.onnx", 160, YOLO_SHAPES_EPOCHS), "shapes:160"


def yolov8n_shapes_onnx(path: Path, size: int, epochs: int) -> Path:
    """YOLOv8n trained from scratch by ultralytics on 800 `shapes` images drawn with another seed than the
    bundled set (so the splits a search scores on are unseen): a detector whose answers have margins, unlike
    a random-weight one. Training takes minutes on a CPU; its weights are cached."""
    import shutil
    import tempfile

    from edgewise.data.dataset import Dataset
    from edgewise.data.keywords import cache_dir
    from edgewise.data.shapes import shapes, write_yolo_folder

    cached = cache_dir().parent / f"yolov8n-shapes-{size}-e{epochs}.pt"
    _ultralytics_offline()
    import_torchvision()
    from ultralytics import YOLO

    if not cached.is_file():
        ds = shapes(size, seed=11)
        with tempfile.TemporaryDirectory(prefix="edgewise-yolo-train-") as tmp:
            root = Path(tmp)
            for part, rows in (("train", slice(0, 640)), ("val", slice(640, None))):
                sub = Dataset(ds.name, ds.x[rows], None, ds.labels, ds.preprocessing, boxes=ds.boxes[rows])
                folder = write_yolo_folder(sub, root / f"yolo-{part}")
                for kind in ("images", "labels"):
                    (root / kind).mkdir(exist_ok=True)
                    (folder / kind).rename(root / kind / part)
            names = "".join(f"  {i}: {n}\n" for i, n in enumerate(ds.labels))
            (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
            _seeded()
            YOLO("yolov8n.yaml").train(data=str(root / "data.yaml"), epochs=epochs, imgsz=size, batch=32, workers=0,
                                       device="cpu", plots=False, amp=False, val=False, seed=0, verbose=False,
                                       project=str(root / "runs"), name="r", exist_ok=True, pretrained=False)
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "runs" / "r" / "weights" / "last.pt", cached)
    return _export_yolo(YOLO(str(cached)).model.float().eval(), path, size)


def _ssdlite(d: Path) -> tuple[Path, str]:
    """torchvision's SSDLite320 (MobileNetV3 backbone) up to decoded boxes and class scores, before NMS."""
    import torch

    import_torchvision()
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from torchvision.models.detection.image_list import ImageList

    _seeded()
    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6).eval()
    # torchvision starts the head near zero, so an untrained SSD answers every image alike (uniform scores,
    # boxes = anchors); random head weights make its answers depend on the image, as a trained one's do.
    with torch.no_grad():
        for name, p in ssd.head.named_parameters():
            torch.nn.init.normal_(p, std=0.05 if name.endswith("weight") else 0.1)
    size = 320
    _bn_from_photos(ssd.backbone, size)
    with torch.no_grad():
        feats = list(ssd.backbone(torch.zeros(1, 3, size, size)).values())
        anchors = ssd.anchor_generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), feats)[0]

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ssd = ssd
            self.register_buffer("anchors", anchors)

        def forward(self, x):  # type: ignore[no-untyped-def]
            feats = list(self.ssd.backbone(x).values())
            out = self.ssd.head(feats)
            boxes = self.ssd.box_coder.decode_single(out["bbox_regression"][0], self.anchors)
            return boxes.unsqueeze(0), torch.softmax(out["cls_logits"], dim=-1)

    return _export(Head(), (torch.zeros(1, 3, size, size),), d / "model.onnx", ["image"],
                   ["boxes", "scores"]), f"photos:{size}"


def _lraspp(d: Path) -> tuple[Path, str]:
    import torch

    import_torchvision()
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    _seeded()
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()

    class Seg(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.net(x)["out"]

    return _export(Seg(), (torch.zeros(1, 3, 128, 128),), d / "model.onnx", ["image"], ["masks"]), "photos:128"


def _write_npz(d: Path, arrays: dict[str, np.ndarray]) -> str:
    path = d / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _gru(d: Path) -> tuple[Path, str]:
    """A streaming keyword model: features, the GRU state in and out, and an int64 frame counter."""
    import torch

    class StreamingGRU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(40, 64, batch_first=True)
            self.head = torch.nn.Linear(64, 12)

        def forward(self, feats, state, step):  # type: ignore[no-untyped-def]
            feats = feats + 0.01 * step.to(feats.dtype)
            out, new_state = self.gru(feats, state)
            return self.head(out[:, -1]), new_state

    _seeded()
    m = StreamingGRU()
    args = (torch.zeros(1, 49, 40), torch.zeros(1, 1, 64), torch.tensor(0, dtype=torch.int64))
    path = _export(m, args, d / "model.onnx", ["feats", "state", "step"], ["logits", "state_out"])
    rng = np.random.default_rng(0)
    n = 96
    t = np.linspace(0, 1, 49, dtype=np.float32)[None, :, None]
    feats = (np.sin(2 * np.pi * rng.uniform(1, 6, (n, 1, 40)) * t) + 0.3 * rng.standard_normal((n, 49, 40)))
    data = {"feats": feats.astype(np.float32)[:, None], "state": (0.5 * rng.standard_normal((n, 1, 1, 64))).astype(np.float32),
            "step": rng.integers(0, 100, n).astype(np.int64)}
    return path, _write_npz(d, data)


def _encoder(d: Path) -> tuple[Path, str]:
    """A small transformer encoder over int64 tokens with a bool padding mask, pooled to an embedding."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(1000, 64)
            layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, tokens, mask):  # type: ignore[no-untyped-def]
            h = self.encoder(self.embed(tokens), src_key_padding_mask=mask)
            keep = (~mask).unsqueeze(-1).to(h.dtype)
            return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    _seeded()
    torch.backends.mha.set_fastpath_enabled(False)
    m = Encoder()
    args = (torch.zeros(1, 32, dtype=torch.int64), torch.zeros(1, 32, dtype=torch.bool))
    path = _export(m, args, d / "model.onnx", ["tokens", "mask"], ["embedding"])
    rng = np.random.default_rng(1)
    n = 96
    tokens = rng.integers(1, 1000, (n, 1, 32)).astype(np.int64)
    lengths = rng.integers(8, 33, n)
    mask = np.arange(32)[None, None, :] >= lengths[:, None, None]
    return path, _write_npz(d, {"tokens": tokens, "mask": mask})


def _external_data(d: Path) -> tuple[Path, str]:
    """A classifier whose weights live in a separate .data file beside the graph."""
    path, data = _mobilenetv3(d)
    model = onnx.load(str(path))
    path.unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
    return path, data


def _loop_if(d: Path) -> tuple[Path, str]:
    """Three refinement steps in a Loop, then an If choosing the sign by the input's mean."""
    rng = np.random.default_rng(2)
    w = helper.make_tensor("W", TensorProto.FLOAT, [16, 16], (rng.standard_normal((16, 16)) * 0.3).ravel().tolist())
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "W"], ["mm"]), helper.make_node("Relu", ["mm"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "refine",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 16])])
    then_g = helper.make_graph([helper.make_node("Identity", ["h"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, ["N", 16])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["y_else"])], "else", [],
                               [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, ["N", 16])])
    nodes = [
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [3])),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "go", "x"], ["h"], body=body),
        helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Greater", ["mean", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(nodes, "loop_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = d / "model.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((200, 16)).astype(np.float32)
    np.savez(d / "data.npz", x=x)
    return path, str(d / "data.npz")


def _opset9(d: Path) -> tuple[Path, str]:
    """A small CNN exported at opset 9 (lifted on load)."""
    import torch

    _seeded()
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    return _export(m, (torch.zeros(1, 1, 8, 8),), d / "model.onnx", ["x"], ["logits"], opset=9,
                   dynamic={"x": {0: "batch"}, "logits": {0: "batch"}}), "digits"


def _unknown_op(d: Path) -> tuple[Path, str]:
    node = helper.make_node("FancyActivation", ["x"], ["y"], name="head/fancy", domain="com.example")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = d / "model.onnx"
    onnx.save(model, str(path))
    return path, "digits"


def rapidocr_model(filename: str) -> Path:
    import rapidocr_onnxruntime

    path = Path(os.path.dirname(rapidocr_onnxruntime.__file__)) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"rapidocr-onnxruntime no longer ships {filename}")
    return path


def _rapidocr(filename: str, data: str) -> Callable[[Path], tuple[Path, str]]:
    return lambda d: (rapidocr_model(filename), data)


CORPUS: tuple[CorpusModel, ...] = (
    CorpusModel("mobilenetv3-small", "classification", "torchvision MobileNetV3-small, width 0.5, 96x96",
                _mobilenetv3, mcu=True),
    CorpusModel("efficientnet-b0", "classification", "torchvision EfficientNet-B0, width/depth 0.5, 64x64",
                _efficientnet),
    CorpusModel("resnet", "classification", "torchvision ResNet, BasicBlock [1,1,1,1], 64x64", _resnet),
    CorpusModel("shufflenet-v2", "classification", "torchvision ShuffleNetV2 x0.5, 64x64", _shufflenet, mcu=True),
    CorpusModel("regnetx-200mf", "classification", "torchvision RegNetX-200MF design, 64x64", _regnet),
    CorpusModel("yolov8n", "detection", "ultralytics YOLOv8n (model yaml), 160x160, [1, 84, A] head", _yolov8n),
    CorpusModel("ssdlite", "detection", "torchvision SSDLite320-MobileNetV3, decoded boxes + scores", _ssdlite),
    CorpusModel("lraspp", "segmentation", "torchvision LR-ASPP MobileNetV3-large, 4 classes, 128x128", _lraspp),
    CorpusModel("gru-stream", "regression", "GRU keyword model: features, state in/out, int64 step", _gru,
                mcu=True),
    CorpusModel("encoder-mask", "regression", "transformer encoder, int64 tokens + bool mask", _encoder,
                task_flag="regression"),
    CorpusModel("external-data", "classification", "MobileNetV3-small with weights in model.onnx.data",
                _external_data),
    CorpusModel("loop-if", "regression", "hand-built graph with Loop and If", _loop_if, task_flag="regression"),
    CorpusModel("opset9-cnn", "classification", "small CNN exported at opset 9", _opset9, mcu=True),
    CorpusModel("unknown-op", "regression", "a custom-domain operator no runtime implements", _unknown_op,
                expect_error="FancyActivation"),
    CorpusModel("ppocr-cls", "classification", "PaddleOCR text-direction classifier (rapidocr wheel)",
                _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx", "textlines"), pretrained=True, mcu=True),
    CorpusModel("ppocr-det", "segmentation", "PaddleOCR PP-OCRv4 DBNet text detector (rapidocr wheel)",
                _rapidocr("ch_PP-OCRv4_det_infer.onnx", "textscenes:160"), pretrained=True),
    CorpusModel("ppocr-rec", "ctc", "PaddleOCR PP-OCRv4 text recognizer, CTC (rapidocr wheel)",
                _rapidocr("ch_PP-OCRv4_rec_infer.onnx", "textlines:upright"), pretrained=True),
)


# Models that take minutes to build (they train): for the benchmarks, not the test suite's corpus run.
TRAINED: tuple[CorpusModel, ...] = (
    CorpusModel("yolov8n-shapes", "detection", f"ultralytics YOLOv8n trained on shapes ({YOLO_SHAPES_EPOCHS} epochs), "
                "160x160", _yolov8n_shapes, pretrained=True),
)


def get(name: str) -> CorpusModel:
    for m in CORPUS + TRAINED:
        if m.name == name:
            return m
    raise KeyError(f"no corpus model {name!r}: {', '.join(m.name for m in CORPUS + TRAINED)}")


def build(name: str, directory: Path) -> tuple[Path, str]:
    """Write corpus model `name` under `directory`; returns (model path, --data spec)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return get(name).builder(directory)
