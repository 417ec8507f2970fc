"""Tell devices over MQTT that their assignment changed, so they poll now instead of at their next tick.

Best effort by design: a notification only shortens the wait; polling with jitter remains the path that
always works (a device offline when notified still finds its assignment at its next poll).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgewise.errors import FleetError
from edgewise.hostport import parse_hostport
from edgewise.protocol import NOTIFY_PAYLOAD, NOTIFY_TOPIC


class MqttNotifier:
    def __init__(self, broker: str, client_id: str = "edgewise-fleet") -> None:
        import paho.mqtt.client as mqtt

        host, port = parse_hostport(broker, "MQTT broker", FleetError)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.connect_async(host, port, keepalive=30)  # the server starts even while the broker is down
        self.client.loop_start()
        self.sent = 0

    def __call__(self, device_ids: Iterable[str]) -> None:
        for d in device_ids:
            self.client.publish(NOTIFY_TOPIC.format(device_id=d), NOTIFY_PAYLOAD, qos=1)
            self.sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
