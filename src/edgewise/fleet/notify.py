"""Tell devices over MQTT that their assignment changed, so they poll now instead of at their next tick.

Best effort by design: a notification only shortens the wait; polling with jitter remains the path that
always works (a device offline when notified still finds its assignment at its next poll).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgewise.errors import FleetError
from edgewise.hostport import parse_hostport
from edgewise.protocol import NOTIFY_PAYLOAD, NOTIFY_TAG_TOPIC, NOTIFY_TOPIC

TAG_MIN = 100  # a wave at least this large is announced once on its tag's topic


class MqttNotifier:
    def __init__(self, broker: str, client_id: str = "edgewise-fleet", tag_min: int = TAG_MIN) -> None:
        import paho.mqtt.client as mqtt

        host, port = parse_hostport(broker, "MQTT broker", FleetError)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.connect_async(host, port, keepalive=30)  # the server starts even while the broker is down
        self.client.loop_start()
        self.tag_min, self.sent, self.sent_tags = tag_min, 0, 0

    def __call__(self, changed: Iterable[tuple[str, str | None]]) -> None:
        """One message per device, except a wave of at least `tag_min` devices of one tag: one message on the
        tag's topic (devices of the tag outside the wave poll too, and find nothing new)."""
        by_tag: dict[str | None, list[str]] = {}
        for device_id, tag in changed:
            by_tag.setdefault(tag, []).append(device_id)
        for tag, ids in by_tag.items():
            if tag is not None and len(ids) >= self.tag_min:
                self.client.publish(NOTIFY_TAG_TOPIC.format(tag=tag), NOTIFY_PAYLOAD, qos=1)
                self.sent_tags += 1
                continue
            for d in ids:
                self.client.publish(NOTIFY_TOPIC.format(device_id=d), NOTIFY_PAYLOAD, qos=1)
                self.sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
