"""Parameter and multiply-add counts, measured with forward hooks on one batch-1 pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from xvol_export.fold.family import block_types, deploy_family, training_family


@dataclass
class Profile:
    """Per-module multiply-adds (leaf convs and linears, plus each attention aggregate) and output shapes."""

    macs: dict[str, int] = field(default_factory=dict)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def macs_under(self, prefix: str) -> int:
        return sum(v for k, v in self.macs.items() if k == prefix or k.startswith(prefix + "."))


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """Count multiply-adds of one forward pass at ``input_shape`` (batch included; reported per item)."""
    profile = Profile()
    batch = input_shape[0]
    hooks = []

    def record(name: str, module: nn.Module):
        family = training_family(module) or deploy_family(module)

        def hook(_module, _inputs, output):
            profile.output_shapes[name] = tuple(output.shape)
            per_item = output.numel() // batch
            if isinstance(module, nn.modules.conv._ConvNd):
                taps = math.prod(module.kernel_size)
                profile.macs[name] = per_item * (module.in_channels // module.groups) * taps
            elif isinstance(module, nn.Linear):
                profile.macs[name] = per_item * module.in_features
            elif family is not None and family.extra_macs is not None:
                extra = family.extra_macs(module, tuple(_inputs[0].shape), tuple(output.shape))
                if extra:
                    profile.macs[name + ".<extra>"] = extra

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear) + block_types()):
            hooks.append(module.register_forward_hook(record(name, module)))
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else "cpu"
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, dtype=dtype, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return profile


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
