"""Serving: the HTTP and MQTT faces, request validation, the model manager, the C runtime and the cascade."""

from edgewise.agent.serve.cascade import CascadeConfig, Inference, PrivacyPolicy
from edgewise.agent.serve.inputs import BadInput
from edgewise.agent.serve.models import ModelManager

__all__ = ["BadInput", "CascadeConfig", "Inference", "ModelManager", "PrivacyPolicy"]
