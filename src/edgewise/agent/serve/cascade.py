"""Answer locally when confident, escalate the rest to the tier above; degrade gracefully offline.

What may leave the device is the deployment's `PrivacyPolicy`: by default results only (label, score,
model, version, timestamps) and no escalation with raw inputs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgewise.agent.forward.queue import GroupCommitter, NewItem
from edgewise.agent.forward.upstream import Upstream, UpstreamUnavailable
from edgewise.agent.serve.inputs import BadInput, outputs_json
from edgewise.agent.serve.models import ModelManager
from edgewise.bundle.split import tail_name
from edgewise.errors import AgentError, DataError
from edgewise.media import ImageSpec, classify, decode, detect, prepare, read_text

TIERS = ("endpoint", "node", "server")
# An unsure detection goes up as a square crop this many times the box's longer side (clipped to the
# image), so the tier above sees the object at about the scale detectors are trained on, with context.
CROP_CONTEXT = 2.5
# All a result event carries upstream, with short keys because results are most of what a device sends:
# model, version, label, score, timestamp, and (only when they differ from the default) tier and degraded.
RESULT_FIELDS = ("m", "v", "l", "s", "ts", "tier", "d")
ESCALATE = ("none", "raw", "features")


@dataclass
class PrivacyPolicy:
    # none | raw | features: may low-confidence samples go to the tier above, and as what? `features` sends
    # the model's embedding (see bundle.split) to the tier above's `<model>-tail`, never the raw input.
    escalate: str = "none"
    review_offline: bool = True  # escalations that could not be sent are queued for later review
    send_results: bool = True  # results (RESULT_FIELDS only) are queued for upstream

    def __post_init__(self) -> None:
        if self.escalate not in ESCALATE:
            raise AgentError(f"privacy escalate must be one of {', '.join(ESCALATE)}, got {self.escalate!r}")


@dataclass
class CascadeConfig:
    tier: str = "server"
    default_threshold: float = 0.9
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> label -> threshold

    def threshold(self, model: str, label: str) -> float:
        return self.thresholds.get(model, {}).get(label, self.default_threshold)


def task_of(manifest: Any) -> str:
    """What the bundle's outputs mean. Bundles written before manifests had `task` were all answered as
    classifiers; they still are when they carry labels."""
    if manifest.task:
        return manifest.task
    return "classification" if manifest.labels else "regression"


def probabilities(out: np.ndarray, already: bool = False) -> np.ndarray:
    """Softmax of logits; `already=True` (the model ends in Softmax) passes them through."""
    out = out.reshape(len(out), -1)
    if already:
        return out
    e = np.exp(out - out.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def top1(rows: list[list[float]], already: bool = False) -> tuple[list[int], list[float]]:
    """Class and softmax score per row, in plain Python: for a handful of classes it is several times
    cheaper than NumPy's per-call overhead (which was half the agent's cost over a bare run)."""
    classes, scores = [], []
    for row in rows:
        k = max(range(len(row)), key=row.__getitem__)
        if already:
            scores.append(float(row[k]))
        else:
            top = row[k]
            scores.append(1.0 / sum(math.exp(v - top) for v in row))
        classes.append(k)
    return classes, scores


def crop_jpeg(im: Any, box: list[float]) -> tuple[bytes, tuple[int, int]]:
    """A JPEG of the square around `box` (CROP_CONTEXT times its longer side, clipped to the image), and
    where the crop's top-left corner is in the image."""
    import io

    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0) * CROP_CONTEXT
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    right, bottom = min(im.width, int(cx + side / 2) + 1), min(im.height, int(cy + side / 2) + 1)
    buf = io.BytesIO()
    im.crop((left, top, max(right, left + 1), max(bottom, top + 1))).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue(), (left, top)


def _replace_box(box: dict[str, Any], up: dict[str, Any], left: int, top: int) -> bool:
    """The tier above's answer for a crop, into our box; False when it found nothing there."""
    if "boxes" in up:
        if not up["boxes"]:
            return False
        best = max(up["boxes"], key=lambda b: float(b["score"]))
        x1, y1, x2, y2 = (float(v) for v in best["box"])
        box["box"] = [round(x1 + left, 1), round(y1 + top, 1), round(x2 + left, 1), round(y2 + top, 1)]
    else:
        best = up
    box.update({"label": str(best["label"]), "class": int(best["class"]), "score": float(best["score"]),
                "tier": str(best.get("tier", up.get("tier", "upstream"))), "escalated_from": box["tier"]})
    return True


class Inference:
    def __init__(self, models: ModelManager, cascade: CascadeConfig, policy: PrivacyPolicy,
                 committer: GroupCommitter | None = None, upstream: Upstream | None = None) -> None:
        if cascade.tier not in TIERS:
            raise AgentError(f"tier must be one of {TIERS}, got {cascade.tier!r}")
        self.models, self.cascade, self.policy = models, cascade, policy
        self.committer, self.upstream = committer, upstream
        self.counts = {"requests": 0, "samples": 0, "local": 0, "escalated": 0, "degraded": 0,
                       "blocked_by_policy": 0, "review_queued": 0}
        from edgewise.agent.serve.sensorstream import SensorStreams

        self.sensors = SensorStreams(self)  # per-device rings of streamed sensor readings

    def answer(self, name: str, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        """Every output by name (dtype, shape, values); for a classifier also `results` (label, score,
        cascade), as `predict` gives them; for a text recognizer the text each sample reads."""
        t0 = time.perf_counter()
        m = self.models.get(name)
        m.requests += 1
        outs = m.session.run(None, feed)
        names = [o["name"] for o in m.manifest.outputs] or [f"output{i}" for i in range(len(outs))]
        answer: dict[str, Any] = {"task": task_of(m.manifest),
                                  "outputs": outputs_json(names, [np.asarray(o) for o in outs[: len(names)]])}
        if answer["task"] == "classification":
            answer["results"] = self._classify(name, m, feed, outs, t0)
        elif answer["task"] == "anomaly":  # feature vectors sent as they are: one verdict per sample
            answer["results"] = self._anomalies(name, m, np.asarray(outs[0]), None)
        elif answer["task"] == "ctc" and (m.manifest.postprocessing or {}).get("kind") == "ctc":  # one text per line
            try:
                answer["results"] = [read_text(o, list(m.manifest.labels)) for o in np.asarray(outs[0])]
            except DataError as e:
                raise AgentError(f"model {name}: {e}") from e
            self.counts["requests"] += 1
            self.counts["samples"] += len(answer["results"])
            self.counts["local"] += len(answer["results"])
        else:
            self.counts["requests"] += 1
            self.counts["samples"] += 1
            self.counts["local"] += 1
        return answer

    def answer_image(self, name: str, raw: bytes) -> dict[str, Any]:
        """A JPEG/PNG through the bundle's declared preprocessing and postprocessing: boxes in the image's
        own pixels, or label, score and the top k (classifiers also go through the cascade and the queue)."""
        m = self.models.get(name)
        spec_doc = (m.manifest.preprocessing or {}).get("image")
        try:
            im = decode(raw, ImageSpec.from_dict(spec_doc) if spec_doc else None)
        except DataError as e:
            raise BadInput(str(e)) from e
        # crops for the tier above come from the full-resolution picture, decoded again only if needed
        return self.answer_picture(name, im, full=lambda: decode(raw))

    def answer_audio(self, name: str, raw: bytes,
                     decode: Callable[[bytes], tuple[np.ndarray, int]] | None = None) -> dict[str, Any]:
        """A WAV through the bundle's audio front end (`media.audio`). A clip (up to 1.5x the declared clip
        length) answers label, score and the top k, through the cascade and the result queue like any
        sample; a longer recording answers the keywords in it with their times (`media.recognize`). `decode`
        turns the body into (samples, rate): a WAV file by default, raw PCM when the service says so."""
        from edgewise.media.audio import AudioSpec, features, read_wav, resample
        from edgewise.media.recognize import Smoothing, detect_keywords

        m = self.models.get(name)
        spec_doc = (m.manifest.preprocessing or {}).get("audio")
        if spec_doc is None:
            raise BadInput(f"model {name} declares no audio front end: send its input tensor (JSON or .npy)")
        if task_of(m.manifest) != "classification":
            raise BadInput(f"model {name} ({task_of(m.manifest)}) has no audio answer yet; send its input tensor")
        spec = AudioSpec.from_dict(spec_doc)
        try:
            samples, rate = (decode or read_wav)(raw)
        except DataError as e:
            raise BadInput(str(e)) from e
        samples = resample(samples, rate, spec.sample_rate)
        labels = list(m.manifest.labels)
        if len(samples) > 1.5 * spec.clip_samples:  # a recording, not a clip: the keywords in it, with times
            t0 = time.perf_counter()

            def run(x: np.ndarray) -> np.ndarray:
                m.requests += 1
                return np.asarray(m.session.run(None, {m.input_name: x})[0])

            smoothing = Smoothing.from_dict((m.manifest.postprocessing or {}).get("keyword_spotting"), spec.stride_ms)
            found = detect_keywords(samples, spec, labels, run, smoothing)
            self.counts["requests"] += 1
            self.counts["samples"] += 1
            self.counts["local"] += 1
            return {"task": "keyword_spotting", "detections": found, "duration_s": round(len(samples) / spec.sample_rate, 3),
                    "tier": self.cascade.tier, "latency_ms": (time.perf_counter() - t0) * 1e3}
        return self._labelled(name, m, features(samples, spec)[None, None])

    def answer_readings(self, name: str, readings: np.ndarray) -> dict[str, Any]:
        """A recording of sensor readings [samples, channels] through the bundle's sensor front end
        (`media.sensor`: spectral features, or the standardized window itself), cut into the windows the
        device's C stream runs (every stride once a window is full). Per window, the time its window ends
        and: for an anomaly detector `anomaly`, `score` and `threshold` (anomalies are queued upstream as
        `anomaly` events); for a classifier label and score, through the cascade and the result queue."""
        from edgewise.media.sensor import SensorInput

        m = self.models.get(name)
        try:
            sensor = SensorInput.from_preprocessing(m.manifest.preprocessing or {})
            if sensor is None:
                raise BadInput(f"model {name} declares no sensor front end (spectral features or a window of "
                               "readings): send its input tensor (JSON or .npy)")
            ends, wins = sensor.windows(readings)
            x = sensor.inputs(wins)
        except DataError as e:
            raise BadInput(str(e)) from e
        end_s = [round(float(e) / sensor.rate_hz, 3) for e in ends]
        t0 = time.perf_counter()
        windows = self.answer_windows(name, x, end_s, key="end_s")
        answer: dict[str, Any] = {"task": task_of(m.manifest), "windows": windows, "tier": self.cascade.tier,
                                  "latency_ms": (time.perf_counter() - t0) * 1e3}
        if answer["task"] == "anomaly":
            answer["anomalies"] = sum(w["anomaly"] for w in windows)
        return answer

    def answer_windows(self, name: str, x: np.ndarray, stamps: list[float], device: str | None = None,
                       key: str = "ts") -> list[dict[str, Any]]:
        """The answer for each window's model input in `x`, stamped `key: stamps[i]` (seconds into a
        recording, or the Unix time a streamed window ends): an anomaly verdict (anomalies queued upstream
        with the device and stamp), or label and score through the cascade and the result queue."""
        m = self.models.get(name)
        task = task_of(m.manifest)
        # one run for every window, unless the model takes a fixed batch of one
        fixed = (m.manifest.inputs[0]["shape"] or [None])[0] == 1 if m.manifest.inputs else False
        batches = [x[i : i + 1] for i in range(len(x))] if fixed else [x]
        if task == "anomaly":
            m.requests += 1
            out = np.concatenate([np.asarray(m.session.run(None, {m.input_name: b})[0]) for b in batches])
            return self._anomalies(name, m, out, stamps, key, device)
        if task != "classification":
            raise BadInput(f"model {name} ({task}) has no answer for sensor readings yet; send its input tensor")
        results = [r for b in batches for r in self.predict(name, b)]
        return [{key: t, "label": r["label"], "class": r["class"], "score": r["score"], "tier": r["tier"],
                 **({"device": device} if device is not None else {})} for t, r in zip(stamps, results)]

    def _anomalies(self, name: str, m: Any, out: np.ndarray, stamps: list[float] | None, key: str = "end_s",
                   device: str | None = None) -> list[dict[str, Any]]:
        """Anomaly verdicts for residuals `out` (one row per window); the anomalies are queued upstream."""
        from edgewise.media.anomaly import answer as verdict

        post = m.manifest.postprocessing or {}
        try:
            found = [verdict(row, post) for row in out.reshape(len(out), -1)]
        except DataError as e:
            raise AgentError(f"model {name}: {e}") from e
        if stamps is not None:
            found = [{key: t, **f} for t, f in zip(stamps, found)]
        if device is not None:
            found = [{**f, "device": device} for f in found]
        self.counts["requests"] += 1
        self.counts["samples"] += len(found)
        self.counts["local"] += len(found)
        bad = [f for f in found if f["anomaly"]]
        if bad and self.policy.send_results and self.committer is not None:
            now = round(time.time(), 3)
            self.committer.submit([NewItem(json.dumps(
                {"m": name, "v": m.manifest.version, "s": round(f["score"], 5), "thr": round(f["threshold"], 5),
                 "ts": f[key] if key == "ts" else now, **({"end_s": f["end_s"]} if "end_s" in f else {}),
                 **({"dev": device} if device is not None else {})}, separators=(",", ":")).encode(),
                topic="anomaly") for f in bad])
        return found

    def _labelled(self, name: str, m: Any, x: np.ndarray) -> dict[str, Any]:
        """A classifier's answer to one prepared signal (image or audio): through the cascade and the result
        queue like any sample, then label, score and the top k with the bundle's class names."""
        results = self.predict(name, x)
        top_k = int((m.manifest.postprocessing or {}).get("top_k", 5))
        top = classify(np.asarray(results[0]["outputs"]), list(m.manifest.labels), top_k)
        return {"task": "classification", **{k: results[0][k] for k in ("tier", "degraded", "latency_ms")}, **top}

    def answer_picture(self, name: str, im: Any, queue: bool = True,
                       full: Callable[[], Any] | None = None) -> dict[str, Any]:
        """A decoded picture (a Pillow image: a request's, or a video frame's) -> the bundle's answer.
        Detections below the cascade's threshold go to the tier above as crops when the policy lets raw
        pixels leave (`escalate = "raw"`); its answer replaces ours. With `queue`, the boxes (never the
        picture) are queued upstream as one `detection` event."""
        m = self.models.get(name)
        spec_doc = (m.manifest.preprocessing or {}).get("image")
        if spec_doc is None:
            raise BadInput(f"model {name} declares no image preprocessing: send its input tensor (JSON or .npy), "
                           "or optimize it with --preprocess")
        try:
            prepared = prepare(im, ImageSpec.from_dict(spec_doc))
        except DataError as e:
            raise BadInput(str(e)) from e
        post = m.manifest.postprocessing or {}
        labels = list(m.manifest.labels)
        if task_of(m.manifest) == "classification":
            return {**self._labelled(name, m, prepared.tensor), "image_size": list(prepared.original)}
        if post.get("kind") == "ctc":
            return {**self._read(name, m, prepared.tensor, queue), "image_size": list(prepared.original)}
        if post.get("kind") != "detection":
            raise BadInput(f"model {name} ({task_of(m.manifest)}) has no image answer yet; send its input tensor")
        t0 = time.perf_counter()
        m.requests += 1
        outs = m.session.run(None, {m.input_name: prepared.tensor})
        found = detect(outs, post, prepared, labels)
        for b in found["boxes"]:
            b["tier"] = self.cascade.tier
        self.counts["requests"] += 1
        self.counts["samples"] += 1
        self._escalate_boxes(name, full or (lambda: im), found["boxes"])
        answer = {"task": "detection", "tier": self.cascade.tier, **found,
                  "latency_ms": (time.perf_counter() - t0) * 1e3}
        if queue and self.policy.send_results and self.committer is not None:
            event = {"m": name, "v": m.manifest.version, "ts": round(time.time(), 3),
                     "boxes": [{k: b[k] for k in ("label", "score", "box", "tier") if k in b} for b in found["boxes"]]}
            self.committer.submit([NewItem(json.dumps(event, separators=(",", ":")).encode(), topic="detection")])
        return answer

    def _read(self, name: str, m: Any, x: np.ndarray, queue: bool) -> dict[str, Any]:
        """A text recognizer's answer to one prepared line: its text and score, read with the bundle's
        alphabet. With `queue`, the text (never the picture) is queued upstream as one `text` event."""
        t0 = time.perf_counter()
        m.requests += 1
        try:
            read = read_text(np.asarray(m.session.run(None, {m.input_name: x})[0])[0], list(m.manifest.labels))
        except DataError as e:
            raise AgentError(f"model {name}: {e}") from e
        self.counts["requests"] += 1
        self.counts["samples"] += 1
        self.counts["local"] += 1
        if queue and self.policy.send_results and self.committer is not None:
            event = {"m": name, "v": m.manifest.version, "ts": round(time.time(), 3), "text": read["text"],
                     "s": round(read["score"], 5)}
            self.committer.submit([NewItem(json.dumps(event, separators=(",", ":")).encode(), topic="text")])
        return {"task": "ctc", "tier": self.cascade.tier, **read, "latency_ms": (time.perf_counter() - t0) * 1e3}

    def _escalate_boxes(self, name: str, picture: Callable[[], Any], boxes: list[dict[str, Any]]) -> None:
        """Send a crop around each unsure box up; the tier above's best box (in the crop's pixels) or label
        replaces ours, and a crop where it finds nothing removes the box. Counted per box, like samples."""
        unsure = ([i for i, b in enumerate(boxes) if b["score"] < self.cascade.threshold(name, b["label"])]
                  if self.cascade.tier != "server" else [])
        self.counts["local"] += len(boxes) - len(unsure)
        if not unsure:
            return
        if self.policy.escalate != "raw" or self.upstream is None:  # features of a box: not built yet
            self.counts["blocked_by_policy"] += len(unsure) if self.upstream is not None else 0
            self.counts["local"] += len(unsure)
            return
        dropped: list[int] = []
        im = picture()
        for n, i in enumerate(unsure):
            jpeg, (left, top) = crop_jpeg(im, boxes[i]["box"])
            try:
                up = self.upstream.predict_image(name, jpeg)
                replaced = _replace_box(boxes[i], up, left, top)
            except UpstreamUnavailable:
                rest = unsure[n:]
                for j in rest:
                    boxes[j]["degraded"] = True
                self.counts["degraded"] += len(rest)
                self.counts["local"] += len(rest)
                if self.policy.review_offline and self.committer is not None:
                    import base64

                    self.committer.submit([NewItem(json.dumps(
                        {"model": name, "crop_jpeg": base64.b64encode(crop_jpeg(im, boxes[j]["box"])[0]).decode(),
                         "local_label": boxes[j]["label"], "local_score": boxes[j]["score"], "ts": time.time()}
                    ).encode(), topic="review") for j in rest])
                    self.counts["review_queued"] += len(rest)
                break
            except (KeyError, TypeError, ValueError, IndexError, AgentError) as e:  # a broken answer: keep ours
                boxes[i]["degraded"] = True
                boxes[i]["upstream_error"] = str(e)[:200]
                self.counts["degraded"] += 1
                self.counts["local"] += 1
                continue
            self.counts["escalated"] += 1
            if not replaced:
                dropped.append(i)
        for i in reversed(dropped):
            del boxes[i]

    def predict(self, name: str, x: np.ndarray | dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Label and score per sample of a single-input batch (or one feed by name), with the cascade."""
        t0 = time.perf_counter()
        m = self.models.get(name)
        m.requests += 1
        feed = x if isinstance(x, dict) else {m.input_name: x}
        return self._classify(name, m, feed, m.session.run(None, feed), t0)

    def _classify(self, name: str, m: Any, feed: dict[str, np.ndarray], outs: list[Any],
                  t0: float) -> list[dict[str, Any]]:
        out = np.asarray(outs[0])
        rows = out.reshape(len(out), -1).tolist()
        classes, scores = top1(rows, m.outputs_probabilities)
        labels = m.manifest.labels or [str(i) for i in range(len(rows[0]))]
        local_ms = (time.perf_counter() - t0) * 1e3
        results: list[dict[str, Any]] = []
        unsure: list[int] = []
        # Escalation sends one input's samples; a model with several inputs answers everything here.
        escalating = self.cascade.tier != "server" and len(feed) == 1
        for i, (k, score) in enumerate(zip(classes, scores)):
            label = labels[k] if k < len(labels) else str(k)
            results.append({"label": label, "class": k, "score": score, "tier": self.cascade.tier,
                            "latency_ms": local_ms, "degraded": False, "model": name,
                            "version": m.manifest.version, "outputs": rows[i]})
            if escalating and score < self.cascade.threshold(name, label):
                unsure.append(i)
        x = next(iter(feed.values()))
        if self.policy.escalate == "features" and unsure:
            # What goes up: the embedding (or, for a tail model, the embedding it was given), never x.
            if "split" in m.manifest.artifacts:
                self._escalate(name, x, unsure, results, "features")
            elif m.features_at is None:
                raise AgentError(f"features mode: {name} was loaded without an embedding output")
            else:
                self._escalate(tail_name(name), outs[-1], unsure, results, "features")
        else:
            self._escalate(name, x, unsure, results)
        self.counts["requests"] += 1
        self.counts["samples"] += len(results)
        self._queue_results(results)
        return results

    def _escalate(self, name: str, x: np.ndarray, unsure: list[int], results: list[dict[str, Any]],
                  what: str = "inputs") -> None:
        if not unsure:
            self.counts["local"] += len(results)
            return
        self.counts["local"] += len(results) - len(unsure)
        if self.policy.escalate == "none" or self.upstream is None:
            self.counts["blocked_by_policy"] += len(unsure) if self.upstream is not None else 0
            self.counts["local"] += len(unsure)
            return
        t0 = time.perf_counter()
        try:
            answer = self.upstream.predict(name, x[unsure], what)
            remote = answer["results"]
        except UpstreamUnavailable:
            for i in unsure:
                results[i]["degraded"] = True
            self.counts["degraded"] += len(unsure)
            if self.policy.review_offline and self.committer is not None:
                self.committer.submit([NewItem(json.dumps({"model": name, what: x[i].tolist(),
                                                           "local_label": results[i]["label"],
                                                           "local_score": results[i]["score"],
                                                           "ts": time.time()}).encode(), topic="review")
                                       for i in unsure])
                self.counts["review_queued"] += len(unsure)
            return
        except (KeyError, TypeError, ValueError, AgentError) as e:  # a broken answer: keep ours, say so
            for i in unsure:
                results[i]["degraded"] = True
                results[i]["upstream_error"] = str(e)[:200]
            self.counts["degraded"] += len(unsure)
            return
        upstream_ms = (time.perf_counter() - t0) * 1e3
        for i, r in zip(unsure, remote):
            results[i].update({k: r[k] for k in ("label", "class", "score", "tier", "outputs") if k in r})
            results[i]["latency_ms"] += upstream_ms
            results[i]["escalated_from"] = self.cascade.tier
        self.counts["escalated"] += len(unsure)

    def _queue_results(self, results: list[dict[str, Any]]) -> None:
        if not self.policy.send_results or self.committer is None:
            return
        now = round(time.time(), 3)
        events = []
        for r in results:
            e: dict[str, Any] = {"m": r["model"], "v": r["version"], "l": r["label"], "s": round(r["score"], 4),
                                 "ts": now}
            if r["tier"] != self.cascade.tier:
                e["tier"] = r["tier"]
            if r["degraded"]:
                e["d"] = 1
            events.append(NewItem(json.dumps(e, separators=(",", ":")).encode(), topic="result"))
        self.committer.submit(events)
