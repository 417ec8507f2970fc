"""Device profiles: RAM, flash, latency budget and allowed precisions, from built-in or user TOML."""

from edgewise.targets.profile import TargetProfile, available, load_target

__all__ = ["TargetProfile", "available", "load_target"]
