"""Raw logger CSVs (timestamps, channels, text labels) cut into labelled windows, and what a bad log gets."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.data import load, load_splits
from edgewise.errors import DataError

from ..harness import sensor_log_csv


def test_a_logger_csv_becomes_labelled_windows_with_names_rate_and_channels(tmp_path):
    ds = load(str(sensor_log_csv(tmp_path / "log.csv", gap_at=3000, nan_row=100)))
    assert ds.labels == ["idle", "shake", "walk"] and ds.sample_shape == (3, 100)
    p = ds.preprocessing
    assert p["channels"] == ["ax", "ay", "az"] and p["rate_hz"] == pytest.approx(50, rel=0.01)
    assert p["window_ms"] == 2000 and p["stride_ms"] == 1000 and p["rows_dropped"] == 1 and p["stretches"] == 2
    assert p["windows_dropped_impure"] > 0  # transitions between activities
    w = load(f"{tmp_path / 'log.csv'}:window=1000,stride=250")
    assert w.sample_shape == (3, 50) and len(w) > 3 * len(ds)
    # held-out blocks of neighbouring windows: no window in test overlaps one in train
    s = load_splits(str(tmp_path / "log.csv"))
    assert not set(s.train.groups) & set(s.test.groups) and len(s.test) > 0


def test_a_window_model_trains_on_the_log_and_keeps_the_names(tmp_path):
    from edgewise.zoo import TrainConfig, train

    s = load_splits(str(sensor_log_csv(tmp_path / "log.csv", iso=True)))
    tm = train("cnn1d", s, TrainConfig(epochs=10, min_steps=150))
    assert tm.labels == ["idle", "shake", "walk"] and tm.metrics["test_accuracy"] > 0.9, tm.metrics
    assert tm.preprocessing["channels"] == ["ax", "ay", "az"] and "mean" in tm.preprocessing


@pytest.mark.parametrize("text,fragment", [
    ("timestamp,ax,label\n1,0.1,a\n3,0.2,a\n2,0.3,b\n", "row 4 is not after row 3"),
    ("timestamp,ax,note,label\n1,0.1,hello,a\n2,0.2,x,a\n3,0.3,y,b\n", "note hold text"),
    ("ax,ay,label\n0.1,0.2,walk\n0.2,0.3,walk\n0.3,0.4,idle\n", "give the rate"),
    ("timestamp,ax,label\n1,0.1,a\n2,0.2\n3,0.3,b\n", "row 3 has a different number of columns"),
    ("timestamp,ax,ay\n1,0.1,0.2\n2,0.2,0.3\n3,0.3,0.4\n", "no label column"),
])
def test_bad_logs_get_one_clear_sentence(tmp_path, text, fragment):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=fragment):
        load(str(tmp_path / "bad.csv"))


def test_options_are_checked_and_a_plain_numeric_csv_is_still_a_table(tmp_path):
    sensor_log_csv(tmp_path / "log.csv", seconds_per_segment=4)
    with pytest.raises(DataError, match="unknown sensor-log option"):
        load(f"{tmp_path / 'log.csv'}:windw=100")
    with pytest.raises(DataError, match="under 4 samples"):
        load(f"{tmp_path / 'log.csv'}:window=20")
    (tmp_path / "table.csv").write_text("f1,f2,label\n0.1,0.2,0\n0.3,0.4,1\n0.5,0.6,0\n")
    t = load(str(tmp_path / "table.csv"))
    assert t.sample_shape == (2,) and t.labels == ["0", "1"]


@pytest.mark.parametrize("fmt,start", [("{c}_{i}", 0), ("{c}{i}", 1)])
def test_a_pre_windowed_csv_becomes_channels_by_time(tmp_path, fmt, start):
    rng = np.random.default_rng(0)
    rows, y = rng.normal(size=(12, 3 * 16)), np.arange(12) % 2
    cols = [fmt.format(c=c, i=i) for c in ("ax", "ay", "az") for i in range(start, start + 16)]
    (tmp_path / "w.csv").write_text(",".join([*cols, "label"]) + "\n" + "\n".join(
        ",".join(f"{v:.4f}" for v in r) + f",{k}" for r, k in zip(rows, y)))
    ds = load(str(tmp_path / "w.csv"))
    assert ds.sample_shape == (3, 16) and ds.preprocessing["channels"] == ["ax", "ay", "az"]
    assert ds.x[5, 1, 7] == pytest.approx(rows[5, 16 + 7], abs=1e-4)
    from edgewise.zoo import build

    build("cnn1d", ds.sample_shape, 2)  # the sequence model takes it (it refused 48 flat features before)


def test_a_semicolon_separated_log_reads_like_a_comma_separated_one(tmp_path):
    comma = sensor_log_csv(tmp_path / "log.csv", seconds_per_segment=4)
    (tmp_path / "semi.csv").write_text(comma.read_text().replace(",", ";"))
    a, b = load(str(comma)), load(str(tmp_path / "semi.csv"))
    assert a.labels == b.labels and a.preprocessing["channels"] == b.preprocessing["channels"]
    np.testing.assert_array_equal(a.x, b.x)
