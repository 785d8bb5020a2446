"""Reference networks and the architecture registry."""

from xvol_export.models import resnet  # noqa: F401  (registers the ResNets)
from xvol_export.models.registry import (
    ModelSize,
    create_model,
    get_model_entry,
    list_models,
    model_size,
    register_model,
)

__all__ = ["ModelSize", "create_model", "get_model_entry", "list_models", "model_size", "register_model"]
