"""Reference networks and the architecture registry."""

from xvol_export.models import resnet  # noqa: F401  (registers the ResNets)
from xvol_export.models.registry import create_model, get_model_entry, list_models, register_model

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
