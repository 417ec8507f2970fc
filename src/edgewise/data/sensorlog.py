"""Sensor logs as they come off a logger: a CSV with a timestamp column, one column per channel, and a
label column of strings (or numbers), e.g. `timestamp,ax,ay,az,label`. Cut into fixed-length windows.

- Time: a column named timestamp / time / t / ts (unit from the name's suffix `_ms`, `_us`, `_s`, else from
  magnitude: epoch milliseconds above 1e11, else seconds), or ISO 8601 date-times. Without one, `rate=HZ`
  must be given. It must increase: a step back is an error naming the row.
- Rate: the median sampling interval, or `rate=HZ`; each stretch is resampled to it (linear).
- Gaps: an interval over 3x the median (or rows with a missing or NaN value, which are dropped) splits the
  log into stretches; no window crosses one.
- Windows: `window` ms long every `stride` ms (defaults 2000 and 1000), labelled by the majority label
  inside; a window whose majority is under `purity` (default 0.8) is dropped (a transition).
- Channel order, rate, window, stride and class names are recorded in the dataset's preprocessing (and so in
  the bundle). Unknown text columns are an error that names them.

Comma-, semicolon- or tab-separated. Options follow the file after a colon: `log.csv:window=1000,stride=250,rate=50`.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.data.dataset import Dataset
from edgewise.errors import DataError

TIME_NAMES = ("timestamp", "time", "t", "ts", "datetime", "date")
LABEL_NAMES = ("label", "class", "y", "target", "activity", "state")
OPTIONS = {"window": 2000.0, "stride": None, "rate": None, "purity": 0.8}


def parse_options(text: str) -> dict[str, float | None]:
    opts: dict[str, float | None] = dict(OPTIONS)
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in OPTIONS:
            raise DataError(f"unknown sensor-log option {key!r}: use {', '.join(OPTIONS)} (e.g. log.csv:window=2000,"
                            "stride=500)")
        try:
            opts[key] = float(value)
        except ValueError as e:
            raise DataError(f"sensor-log option {key} needs a number, got {value!r}") from e
    return opts


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan") if s.strip().lower() in ("", "nan", "na", "null", "none") else _raise(s)


def _raise(s: str) -> float:
    raise ValueError(s)


def _dialect(f: Any) -> type[csv.Dialect] | csv.Dialect:
    """Comma, semicolon (common where the decimal mark is a comma) or tab, from the first lines."""
    sample = f.read(4096)
    f.seek(0)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def is_sensor_log(path: Path) -> bool:
    """A CSV with a time column or a text label column: read as a log, not as a table of samples."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f, _dialect(f))
            header = next(reader)
            first = next(reader, [])
    except (OSError, StopIteration, UnicodeDecodeError, csv.Error):
        return False
    names = [h.strip().lower() for h in header]
    if any(n.split("_")[0] in TIME_NAMES for n in names):
        return True
    for n, v in zip(names, first):
        if n in LABEL_NAMES:
            try:
                float(v)
            except ValueError:
                return True
    return False


def _times(col: list[str], name: str) -> np.ndarray:
    """Seconds, from the time column's text."""
    try:
        t = np.array([float(v) for v in col])
    except ValueError:
        try:
            return np.array([dt.datetime.fromisoformat(v.strip()).timestamp() for v in col])
        except ValueError as e:
            raise DataError(f"time column {name!r}: neither numbers nor ISO 8601 date-times ({e})") from e
    if name.endswith("_ms") or name.endswith("ms"):
        return t / 1e3
    if name.endswith("_us"):
        return t / 1e6
    if name.endswith("_s"):
        return t
    return t / 1e3 if np.nanmedian(np.abs(t)) > 1e11 else t


def sensor_log(path: Path, options: str = "") -> Dataset:
    opts = parse_options(options)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, _dialect(f)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from e
    if len(rows) < 3:
        raise DataError(f"{path}: a sensor log needs a header and rows")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if any(len(r) != len(header) for r in body):
        bad = next(i for i, r in enumerate(rows[1:], 2) if any(c.strip() for c in r) and len(r) != len(header))
        raise DataError(f"{path}: row {bad} has a different number of columns than the header")
    cols = list(zip(*body))
    t_idx = next((i for i, n in enumerate(lower) if n.split("_")[0] in TIME_NAMES), None)
    y_idx = next((i for i, n in enumerate(lower) if n in LABEL_NAMES), None)
    if y_idx is None:
        raise DataError(f"{path}: no label column (one of {', '.join(LABEL_NAMES)})")
    channels, values, unknown = [], [], []
    for i, name in enumerate(header):
        if i in (t_idx, y_idx):
            continue
        try:
            values.append([_float(v) for v in cols[i]])
            channels.append(name)
        except ValueError:
            unknown.append(name)
    if unknown:
        raise DataError(f"{path}: column(s) {', '.join(unknown)} hold text; a log has a time column, numeric channels "
                        "and one label column: drop them or rename the label column to `label`")
    if not channels:
        raise DataError(f"{path}: no numeric channel columns")
    x = np.array(values, np.float64).T  # [rows, channels]
    labels_raw = [v.strip() for v in cols[y_idx]]
    if t_idx is not None:
        t = _times(list(cols[t_idx]), lower[t_idx])
        back = np.flatnonzero(np.diff(t) <= 0)
        if len(back):
            raise DataError(f"{path}: timestamps must increase; row {int(back[0]) + 3} is not after row "
                            f"{int(back[0]) + 2}")
        rate = opts["rate"] or 1.0 / float(np.median(np.diff(t)))
    elif opts["rate"]:
        rate = float(opts["rate"])
        t = np.arange(len(x)) / rate
    else:
        raise DataError(f"{path}: no time column; give the rate, e.g. {path.name}:rate=50")
    keep = np.isfinite(x).all(1) & np.array([bool(v) for v in labels_raw])
    dropped = int((~keep).sum())
    t, x = t[keep], x[keep]
    names = sorted({v for v, k in zip(labels_raw, keep) if k})
    y_all = np.array([names.index(v) for v, k in zip(labels_raw, keep) if k])
    # stretches: split where an interval exceeds 3x the median
    breaks = np.flatnonzero(np.diff(t) > 3.0 / rate) + 1
    window_ms = float(opts["window"] or 2000.0)
    stride_ms = float(opts["stride"] or window_ms / 2)
    n_win, n_stride = int(round(window_ms * rate / 1000)), max(1, int(round(stride_ms * rate / 1000)))
    if n_win < 4:
        raise DataError(f"{path}: a {window_ms:g} ms window at {rate:.3g} Hz holds under 4 samples")
    xs, ys, groups, impure = [], [], [], 0
    for s, (a, b) in enumerate(zip(np.r_[0, breaks], np.r_[breaks, len(t)])):
        if b - a < 2:
            continue
        grid = np.arange(t[a], t[b - 1] + 0.5 / rate, 1.0 / rate)
        seg = np.stack([np.interp(grid, t[a:b], x[a:b, c]) for c in range(x.shape[1])])  # [C, T]
        seg_y = y_all[a:b][np.clip(np.searchsorted(t[a:b], grid), 0, b - a - 1)]
        for k, start in enumerate(range(0, seg.shape[1] - n_win + 1, n_stride)):
            counts = np.bincount(seg_y[start : start + n_win], minlength=len(names))
            if counts.max() < float(opts["purity"] if opts["purity"] is not None else 0.8) * n_win:
                impure += 1
                continue
            xs.append(seg[:, start : start + n_win])
            ys.append(int(counts.argmax()))
            groups.append(f"s{s}b{k // 10}")  # blocks of 10 neighbouring windows stay on one side of a split
    if not xs:
        raise DataError(f"{path}: no {window_ms:g} ms window fits in the log's stretches (at {rate:.3g} Hz)")
    g = np.array(groups)
    blocks = sorted(set(groups), key=lambda b: (int(b[1:].split("b")[0]), int(b.split("b")[1])))
    pre = {"layout": "NCT", "channels": channels, "rate_hz": round(rate, 6), "window_ms": window_ms,
           "stride_ms": stride_ms, "standardize": True, "source": str(path), "rows_dropped": dropped,
           "stretches": int(len(breaks) + 1), "windows_dropped_impure": impure,
           "test_groups": blocks[2::5] if len(blocks) >= 5 else []}
    ds = Dataset(path.stem, np.stack(xs).astype(np.float32), np.array(ys), names, pre)
    ds.groups = g
    if not pre["test_groups"]:
        pre.pop("test_groups")
    return ds
