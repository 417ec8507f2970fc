"""The error types edgewise raises; the CLI turns each into a one-line message."""


class EdgewiseError(Exception):
    """Base of every error edgewise raises on purpose (bad input, budgets, corrupt files)."""


class DataError(EdgewiseError):
    """A dataset is missing, empty, malformed or does not fit the model."""


class ModelError(EdgewiseError):
    """A model file is missing, corrupt, not ONNX, or uses an unsupported opset."""


class TargetError(EdgewiseError):
    """A target profile is unknown or malformed."""


class OptimizeError(EdgewiseError):
    """A pass failed, or no candidate fits the target's budget."""


class ProfileError(EdgewiseError):
    """A measurement could not be made: the device to measure on is unreachable, refuses, or answers oddly."""


class BundleError(EdgewiseError):
    """A bundle is incomplete, tampered with, or cannot be written."""


class CodegenError(EdgewiseError):
    """A model cannot be compiled to C: not int8, an unsupported op, dynamic shapes, or over budget."""


class AgentError(EdgewiseError):
    """The device agent cannot do what was asked: bad input, full queue or disk, unknown model."""


class QueueFull(AgentError):
    """The durable queue is at its byte bound and its policy is to refuse."""


class StorageError(AgentError):
    """The disk under the durable queue is full or failing; nothing was acknowledged."""


class SignatureError(BundleError):
    """A bundle or metadata signature is missing, malformed, made by an untrusted key, or does not verify."""


class FederatedError(EdgewiseError):
    """A federated run is set up wrongly, cannot start or join, or could not produce a sound model."""


class FleetError(EdgewiseError):
    """The fleet server or a device updater refused an operation (bad request, auth, state)."""


class FleetNotFound(FleetError):
    """No such model, bundle, device or rollout (HTTP 404)."""


class FleetConflict(FleetError):
    """The request clashes with the fleet's state: a version already registered, an action the rollout's
    state does not allow (HTTP 409)."""
