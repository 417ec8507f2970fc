"""MQTT ingestion: sensors publish readings, the agent publishes results (QoS 1, persistent session).

Topics under a prefix (default `edgewise/<tier>`): readings arrive on `<prefix>/in/<model>` as JSON
`{"id": ..., "inputs": [...]}` (or `{"inputs": {name: [...]}}`); answers leave on `<prefix>/out/<model>` as
`{"id": ..., "outputs": {...}, "results": [...]}` (`results`: label and score, for classifiers).
Streamed sensor readings arrive on `<prefix>/readings/<model>/<device>` as JSON `{"readings": [[...], ...],
"seq": N, "t0": T}` (rows of channels; `seq` and `t0` optional, see `sensorstream`); each window they
complete is answered on `<prefix>/out/<model>/<device>` as `{"device": ..., "windows": [...]}`.
A malformed reading is answered on `<prefix>/errors` and counted; it never stops the agent. The session
is persistent (clean_session=False, a fixed client id), so readings published while the agent was away
are delivered when it reconnects.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt

from edgewise.agent.serve.inputs import BadInput, feed_for, parse_json_inputs
from edgewise.errors import AgentError, EdgewiseError


class MqttBridge:
    def __init__(self, inference: Any, host: str, port: int, client_id: str, prefix: str) -> None:
        self.inference, self.prefix = inference, prefix.rstrip("/")
        self.counts = {"received": 0, "answered": 0, "malformed": 0}
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.host, self.port = host, port

    def start(self) -> MqttBridge:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise AgentError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {e}") from e
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"{self.prefix}/in/+", 1), (f"{self.prefix}/readings/+/+", 1)])

    def _error(self, message: str, reading_id: Any = None) -> None:
        with self._lock:
            self.counts["malformed"] += 1
        self.client.publish(f"{self.prefix}/errors", json.dumps({"id": reading_id, "error": message}), qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.counts["received"] += 1
        parts = msg.topic[len(self.prefix) + 1 :].split("/")
        if parts[0] == "readings" and len(parts) == 3:
            self._readings(parts[1], parts[2], msg.payload)
            return
        model = msg.topic.rsplit("/", 1)[-1]
        reading_id = None
        try:
            body = json.loads(msg.payload)
            reading_id = body.get("id") if isinstance(body, dict) else None
            manifest = self.inference.models.manifest(model)
            answer = self.inference.answer(model, feed_for(parse_json_inputs(body), manifest))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._error(f"payload is not JSON: {e}")
            return
        except BadInput as e:
            self._error(str(e), reading_id)
            return
        except EdgewiseError as e:
            self._error(str(e), reading_id)
            return
        self.client.publish(f"{self.prefix}/out/{model}", json.dumps({"id": reading_id, **answer}), qos=1)
        with self._lock:
            self.counts["answered"] += 1

    def _readings(self, model: str, device: str, payload: bytes) -> None:
        """A chunk of a device's stream: its ring advances, and the windows it completes are answered."""
        try:
            body = json.loads(payload)
            if not isinstance(body, dict) or "readings" not in body:
                raise BadInput('a chunk of readings is {"readings": [[...], ...], "seq": N, "t0": T}')
            out = self.inference.sensors.push(model, device, body["readings"], body.get("seq"), body.get("t0"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._error(f"payload is not JSON: {e}")
            return
        except (ValueError, TypeError, EdgewiseError) as e:  # a bad seq or t0, or readings that do not fit
            self._error(f"readings from {device}: {e}")
            return
        if out["windows"]:
            self.client.publish(f"{self.prefix}/out/{model}/{device}", json.dumps(out), qos=1)
            with self._lock:
                self.counts["answered"] += 1
