"""Reference networks and the architecture registry."""

# each registers its networks (samples: the small networks of the trained MNIST samples)
from xvol_export.models import mobileone, repvgg, resnet, samples  # noqa: F401
from xvol_export.models.registry import (
    ModelSize,
    create_model,
    get_model_entry,
    list_models,
    model_size,
    register_model,
)

__all__ = ["ModelSize", "create_model", "get_model_entry", "list_models", "model_size", "register_model"]
