"""Users' own models, for ``--model user_models:FACTORY`` (``tests/`` is on ``sys.path``; see conftest.py)."""

from __future__ import annotations

from torch import nn

from xvol_export.layers.repvgg import RepVGGBlock


class TinyNet(nn.Module):
    """A stem conv + BN, a RepVGG block, a plain conv + BN, and a head: what a user's small network mixes."""

    def __init__(self, num_classes: int = 4, width: int = 8, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = RepVGGBlock(width, width, 3, padding=1)
        self.conv = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2 * width)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.head(self.bn(self.conv(self.block(self.stem(x)))))


def tiny_net(num_classes: int = 4, width: int = 8) -> nn.Module:
    """No input size declared: xvol needs --input-shape."""
    return TinyNet(num_classes, width)


def tiny_net_cfg(num_classes: int = 4, width: int = 8) -> nn.Module:
    """The input size declared as timm does it."""
    model = TinyNet(num_classes, width)
    model.pretrained_cfg = {"input_size": (3, 16, 16), "num_classes": num_classes}
    return model


def layernorm_net(width: int = 8) -> nn.Module:
    """No BatchNorm anywhere: its training form is not a folded model."""
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(1, width), nn.GELU(), nn.Flatten(2),
                          nn.LayerNorm(256), nn.Flatten(), nn.Linear(width * 256, 3))
    model.default_cfg = {"input_size": [3, 16, 16]}
    return model


def act_net(num_classes: int = 4, act_layer: type[nn.Module] = nn.ReLU) -> nn.Module:
    """A default that JSON cannot hold (timm's style)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act_layer(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    model.pretrained_cfg = {"input_size": (3, 16, 16)}
    return model


def not_a_model(**kwargs) -> dict:
    return {"weights": 1}


def broken(depth: int = 2) -> nn.Module:
    raise RuntimeError(f"depth {depth} is not supported")


NOT_CALLABLE = 3


class TimmStyleBlock(nn.Module):
    """A block xvol does not know, with its own ``reparameterize()`` as timm writes them: in place, returning
    None, the branches deleted and a ``reparam_conv`` added."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv_kxk = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.conv_scale = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.reparam_conv = None

    def forward(self, x):
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.conv_kxk(x) + self.conv_scale(x)

    def reparameterize(self):
        import torch.nn.functional as F

        def fused(branch):
            conv, bn = branch
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            return conv.weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale

        k3, b3 = fused(self.conv_kxk)
        k1, b1 = fused(self.conv_scale)
        conv = nn.Conv2d(k3.shape[1], k3.shape[0], 3, padding=1, bias=True)
        conv.weight.data = k3 + F.pad(k1, (1, 1, 1, 1))
        conv.bias.data = b3 + b1
        del self.conv_kxk, self.conv_scale
        self.reparam_conv = conv


def hooked_net(num_classes: int = 4) -> nn.Module:
    """A stem conv + BN, a timm-style block folded by its own hook, a RepVGG block and a head."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          TimmStyleBlock(8), nn.ReLU(), RepVGGBlock(8, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    model.pretrained_cfg = {"input_size": (3, 16, 16)}
    return model


def identity_mismatch(width: int = 8) -> nn.Module:
    """Asks for an identity branch where the channels differ: the block refuses, naming why."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), RepVGGBlock(width, 2 * width, 3, padding=1,
                                                                        use_identity=True))


class TwoHeadNet(nn.Module):
    """About 1.3k parameters written without xvol: a block with its own ``reparameterize()``, a grouped
    ConvTranspose2d + BN, a Linear + BatchNorm1d, and two outputs (logits and a map)."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = TimmStyleBlock(8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2, bias=False)
        self.up_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)
        self.fc_bn = nn.BatchNorm1d(num_classes)
        self.map = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        x = nn.functional.relu(self.block(self.stem(x)))
        x = nn.functional.relu(self.up_bn(self.up(x)))
        return self.fc_bn(self.fc(x.mean((2, 3)))), self.map(x)


def two_head_net(num_classes: int = 4) -> nn.Module:
    model = TwoHeadNet(num_classes)
    model.pretrained_cfg = {"input_size": (3, 16, 16)}
    return model


class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016): BN and ReLU before each conv, so the first BatchNorm
    follows the previous block's add and the second follows a ReLU; neither has a conv before it to absorb it."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(nn.functional.relu(self.bn1(x)))
        return x + self.conv2(nn.functional.relu(self.bn2(out)))


class PreActNet(nn.Module):
    """A small pre-activation network: a stem, two pre-activation blocks, a final BN + ReLU after the last add,
    and a head whose BatchNorm feeds another BatchNorm that feeds an unpadded 1x1 conv."""

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(PreActBlock(width), PreActBlock(width))
        self.final_bn = nn.BatchNorm2d(width)
        self.head_bn1 = nn.BatchNorm2d(width)
        self.head_bn2 = nn.BatchNorm2d(width)
        self.head_conv = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        x = nn.functional.relu(self.final_bn(self.blocks(self.stem(x))))
        return self.head_conv(self.head_bn2(self.head_bn1(x))).mean((2, 3))


def preact_net(num_classes: int = 4, width: int = 8) -> nn.Module:
    model = PreActNet(num_classes, width)
    model.pretrained_cfg = {"input_size": (3, 16, 16)}
    return model
