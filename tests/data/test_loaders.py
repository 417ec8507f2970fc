from pathlib import Path

import numpy as np
import pytest

from edgewise.data import Dataset, load, load_splits, split
from edgewise.errors import DataError


def test_digits_ships_with_scikit_learn_and_splits_reproducibly():
    # Execute
    a, b = load_splits("digits"), load_splits("digits")
    # Assert
    assert a.train.x.shape[1:] == (1, 8, 8) and a.train.x.dtype == np.float32
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.val.x, b.val.x)
    assert set(np.unique(a.val.y)) == set(range(10)), "stratified: every class in validation"
    assert 0.0 <= a.train.x.min() and a.train.x.max() <= 1.0


def test_digits_upscaled_for_conv_heavy_benchmarks():
    ds = load("digits:32")
    assert ds.x.shape == (1797, 1, 32, 32)


def test_basicmotions_is_standardised_with_train_statistics_only(basicmotions):
    tr = basicmotions.train
    assert tr.x.shape[1:] == (6, 100) and tr.labels == ["badminton", "running", "standing", "walking"]
    np.testing.assert_allclose(tr.x.mean(axis=(0, 2)), 0, atol=1e-4)
    assert len(tr.preprocessing["mean"]) == 6
    assert abs(basicmotions.test.x.mean()) > 1e-6, "test split is not re-standardised on itself"


def test_split_differs_by_seed():
    ds = load("digits")
    assert not np.array_equal(split(ds, seed=0).test.y, split(ds, seed=1).test.y)


def test_npz_with_and_without_labels(tmp_path: Path):
    x = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    np.savez(tmp_path / "lab.npz", x=x, y=np.arange(30) % 3)
    np.savez(tmp_path / "unlab.npz", x=x)
    assert load(str(tmp_path / "lab.npz")).num_classes == 3
    assert load(str(tmp_path / "unlab.npz")).y is None


def test_csv_with_label_column(tmp_path: Path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(10)))
    ds = load(str(p))
    assert ds.x.shape == (10, 2) and ds.y.tolist() == [i % 2 for i in range(10)]


@pytest.mark.parametrize("content, message", [
    ({"tokens": np.array(["a", "b"])}, "must be a numeric or bool array"),
    ({"tokens": np.zeros((4, 3)), "mask": np.zeros((5, 3), bool)}, "same number of samples"),
    ({"x": np.zeros((0, 3))}, "empty"),
    ({"x": np.full((4, 2), np.nan)}, "NaN"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, "labels"),
])
def test_bad_npz_is_a_clear_error(tmp_path: Path, content, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **content)
    with pytest.raises(DataError, match=message):
        load(str(p))


def test_unknown_and_missing_datasets(tmp_path: Path):
    with pytest.raises(DataError, match="unknown dataset"):
        load("imagenet")
    with pytest.raises(DataError, match="not found"):
        load(str(tmp_path / "nope.npz"))
    (tmp_path / "t.csv").write_text("a,b\nx,y\n")
    with pytest.raises(DataError, match="numeric"):
        load(str(tmp_path / "t.csv"))


def test_reshape_refuses_a_different_element_count():
    ds = Dataset("d", np.zeros((5, 64), np.float32), None, [])
    assert ds.reshaped((1, 8, 8)).sample_shape == (1, 8, 8)
    with pytest.raises(DataError, match="expects"):
        ds.reshaped((1, 9, 9))


def test_textlines_are_labelled_upright_and_flipped():
    ds = load("textlines:20")
    assert ds.x.shape == (20, 3, 48, 192) and ds.y.tolist() == [i % 2 for i in range(20)]
    assert -1.0 <= ds.x.min() and ds.x.max() <= 1.0


def test_upright_textlines_carry_their_text_and_paddleocrs_recognizer_reads_it():
    """The recognizer's ground truth: every line upright, with the words printed on it. PP-OCRv4's recognizer
    reads them (its alphabet from the model's own metadata), so a CER against the text measures something."""
    import onnxruntime as ort

    from edgewise.profile.fidelity import _ctc_decode, _edit_distance, ctc_alphabet
    from edgewise.zoo.corpus import rapidocr_model

    ds, mixed = load("textlines:upright:24"), load("textlines:24")
    assert ds.y is None and ds.name == "textlines:upright" and len(ds.texts) == 24 and ds.x.shape[1:] == (3, 48, 320)
    assert ds.texts == mixed.texts and all(t.strip() for t in ds.texts)  # the same words, none turned over
    assert ds.subset(np.arange(3, 6), "s").texts == ds.texts[3:6]
    path = rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")
    sess = ort.InferenceSession(str(path))
    probs = sess.run(None, {sess.get_inputs()[0].name: ds.x})[0]
    import onnx

    alphabet = ctc_alphabet(onnx.load(str(path), load_external_data=False), probs.shape[-1])
    def cer(probs: np.ndarray, texts: list[str]) -> float:
        read = [tuple(alphabet[c] for c in seq) for seq in _ctc_decode(probs)]
        return sum(_edit_distance(r, tuple(t)) for r, t in zip(read, texts)) / sum(len(t) for t in texts)

    assert cer(probs, ds.texts) <= 0.03  # 1.1% on all 600 lines: mostly a space read before the first word
    upside_down = sess.run(None, {sess.get_inputs()[0].name: mixed.x[1::2]})[0]
    assert cer(upside_down, mixed.texts[1::2]) >= 0.5
    with pytest.raises(DataError, match="upright"):
        load("textlines:sideways")


def test_textscenes_are_the_photos_with_words_printed_on_them():
    """A text detector sees text in them: PP-OCRv4's detector marks text on every image, and on no photo."""
    import onnxruntime as ort

    from edgewise.data.photos import photos
    from edgewise.data.textscenes import textscenes
    from edgewise.zoo.corpus import rapidocr_model

    scenes, plain = textscenes(64, n=40), photos(64, n=40, seed=5)
    assert scenes.x.shape == (40, 3, 64, 64) and scenes.y is None and scenes.name == "textscenes:64"
    changed = np.abs(scenes.x - plain.x).reshape(40, -1).max(1)
    assert (changed > 0.2).all()  # every image has a word on it
    sess = ort.InferenceSession(str(rapidocr_model("ch_PP-OCRv4_det_infer.onnx")))

    def found(x: np.ndarray) -> float:
        return float(np.mean([(sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] > 0.5).any()
                              for i in range(12)]))

    assert found(scenes.x) >= 0.75 and found(plain.x) == 0.0
    with pytest.raises(DataError, match="integer"):
        load("textscenes:big")
