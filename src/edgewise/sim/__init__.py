"""Simulators and stand-ins for tests and benchmarks: many devices running the real updater against a fleet
server (`sim.fleet`), an event receiver process (`sim.receiver`). The one place that may use the agent and
the fleet together."""
