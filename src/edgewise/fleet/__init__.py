"""The fleet server: model registry, devices, signed assignments, rollouts in waves with health gates."""
