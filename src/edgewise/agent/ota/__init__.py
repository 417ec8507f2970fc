"""Over-the-air updates: A/B slots per model, the updater (usable on its own, as the fleet simulator does), and
the thread that runs it inside an agent."""

from edgewise.agent.ota.slots import Slots, SlotSet
from edgewise.agent.ota.updater import Identity, Updater, enroll

__all__ = ["Identity", "SlotSet", "Slots", "Updater", "enroll"]
