"""The cost model behind ``layout="auto"``: multiply-adds of the static part plus a per-op charge.

Measured on a 2-core x86 CPU (PyTorch eager, 256 channels at 14x14): the dense 9x9 kernel ran
about 2.5x slower than the split 3x3 + dilated 5x5 pair, close to their MAC ratio (81/34 = 2.4).
So MACs decide, and each extra op is charged a fixed overhead that only matters for tiny maps.
"""

from __future__ import annotations

from dataclasses import dataclass

# One extra conv + add costs about 10 us of dispatch and memory traffic; at a CPU's ~20 GMAC/s
# that is worth about 2e5 multiply-adds.
OP_OVERHEAD_MACS = 200_000


@dataclass(frozen=True)
class LayoutCost:
    layout: str
    taps: int  # kernel taps per output pixel and input channel
    macs: int | None  # multiply-adds of the static part (None when the output size is unknown)
    ops: int  # static convs plus the add that joins them

    def score(self) -> float:
        base = self.macs if self.macs is not None else self.taps
        extra = (self.ops - 1) * OP_OVERHEAD_MACS if self.macs is not None else 0
        return base + extra


def static_costs(cfg: dict, out_hw: tuple[int, int] | None) -> dict[str, LayoutCost]:
    """Cost of each layout of an X-volution block's static part (``cfg`` as from ``XVolution.config()``)."""
    d = cfg["dilation"]
    per_tap = None
    if out_hw is not None:
        per_tap = out_hw[0] * out_hw[1] * cfg["out_channels"] * (cfg["in_channels"] // cfg["groups"])
    if not cfg["dilated_branch"]:
        one = LayoutCost("dense", 9, None if per_tap is None else 9 * per_tap, 1)
        return {"dense": one}
    dense_taps, split_taps = (4 * d + 1) ** 2, 9 + 25
    return {
        "dense": LayoutCost("dense", dense_taps, None if per_tap is None else dense_taps * per_tap, 1),
        "split": LayoutCost("split", split_taps, None if per_tap is None else split_taps * per_tap, 3),
    }


def choose_layout(cfg: dict, out_hw: tuple[int, int] | None) -> tuple[str, str]:
    """The cheaper layout and a one-line reason."""
    costs = static_costs(cfg, out_hw)
    if len(costs) == 1:
        return "dense", "no dilated branch: the static part is one 3x3 conv"
    dense, split = costs["dense"], costs["split"]
    best, other = (dense, split) if dense.score() <= split.score() else (split, dense)
    if best.macs is not None:
        why = f"static convs {best.macs / 1e6:.3g}M MACs vs {other.macs / 1e6:.3g}M"
    else:
        why = f"static convs {best.taps} taps vs {other.taps}"
    return best.layout, f"{why} for {other.layout}"
