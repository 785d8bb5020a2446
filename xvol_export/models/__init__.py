"""Reference networks and the architecture registry."""

from xvol_export.models import mobileone, repvgg, resnet  # noqa: F401  (each registers its networks)
from xvol_export.models import samples  # noqa: F401  (the small networks of the trained MNIST samples)
from xvol_export.models.registry import (
    ModelSize,
    create_model,
    get_model_entry,
    list_models,
    model_size,
    register_model,
)

__all__ = ["ModelSize", "create_model", "get_model_entry", "list_models", "model_size", "register_model"]
