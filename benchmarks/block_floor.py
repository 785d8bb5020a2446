"""The floor of one deploy X-volution block on ONNX Runtime (CPU), and where its time goes.

Floor: the block's multiply-adds at the rate a plain 3x3 conv of the same width reaches here,
plus the attention aggregate's minimum memory traffic (read q, k, v once, write the output once)
at the measured memory bandwidth. Then ONNX Runtime's profiler splits the deploy block's time by
op type, and the same is done for the exact rewrites tried so far.

    python benchmarks/block_floor.py [--channels 256] [--size 14] [--iterations 300]

Prints a table; writes benchmarks/results/block_floor.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from xvol_export import XVolution, XVolutionDeploy
from xvol_export.export import onnx_graph
from xvol_export.fold import fold_xvolution
from xvol_export.profile import profile_model
from xvol_export.utils import randomize_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402


def aggregate_as_convs(q, k, v, shift, scale=1.0):
    """Rewrite tried: the nine shifts as one grouped conv with one-hot 3x3 kernels (27 Slices -> 2 Convs)."""
    n, a, h, w = q.shape
    o = v.shape[1]
    onehot = torch.eye(9, dtype=q.dtype).view(9, 1, 3, 3)
    ks = F.conv2d(k, onehot.repeat(a, 1, 1, 1), padding=shift, dilation=shift, groups=a).view(n, a, 9, h, w)
    logits = (q.unsqueeze(2) * ks).sum(1)
    weights = torch.softmax(logits * scale if scale != 1.0 else logits, dim=1)
    vs = F.conv2d(v, onehot.repeat(o, 1, 1, 1), padding=shift, dilation=shift, groups=o).view(n, o, 9, h, w)
    return (vs * weights.unsqueeze(1)).sum(2)


class AggregateAsConvs(XVolutionDeploy):
    """The split deploy block with the aggregate rewritten as above (same weights, same function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_channels
        q, k, v = torch.split(self.proj(x), [a, a, self.out_channels], dim=1)
        return self.conv(x) + self.dconv(x) + aggregate_as_convs(q, k, v, self.shift)


def session(model: nn.Module, shape, profile_dir: str | None = None) -> ort.InferenceSession:
    graph = onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(model, shape)))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions take turns
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "profile")
    return ort.InferenceSession(graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def median_ms(sessions: dict[str, ort.InferenceSession], x: np.ndarray, iterations: int) -> dict[str, float]:
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {"input": x})
    samples = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in samples.items()}


def op_breakdown(model: nn.Module, x: np.ndarray, iterations: int) -> dict[str, float]:
    """Median per-call time of each op type, from ONNX Runtime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(model, x.shape, tmp)
        for _ in range(iterations):
            s.run(None, {"input": x})
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3  # microseconds -> ms
    return {op: total / iterations for op, total in sorted(per_op.items(), key=lambda kv: -kv[1])}


def memory_bandwidth_gbs() -> float:
    src = np.ones(64 * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times) / 1e9  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    c, hw = args.channels, args.size
    shape = (1, c, hw, hw)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    block = randomize_batchnorm(XVolution(c, c), seed=1).eval()
    split = fold_xvolution(block, "split")
    plain = nn.Conv2d(c, c, 3, padding=1).eval()
    rewritten = AggregateAsConvs(**split.config())
    rewritten.load_state_dict(split.state_dict())
    rewritten.eval()
    with torch.inference_mode():
        probe = torch.from_numpy(x)
        error = float((rewritten(probe) - split(probe)).norm() / split(probe).norm())
    assert error < 1e-5, f"the rewrite is not exact: rel L2 {error:.2e}"
    times = median_ms({"plain 3x3 conv": session(plain, shape), "deploy split": session(split, shape),
                       "deploy split, aggregate as convs": session(rewritten, shape),
                       "training form": session(block, shape)}, x, args.iterations)

    macs = profile_model(split, shape).macs
    plain_macs = c * c * 9 * hw * hw
    rate = plain_macs / times["plain 3x3 conv"]  # MACs per ms
    aggregate = next(v for k, v in macs.items() if k.endswith("<aggregate>"))
    conv_macs = sum(macs.values()) - aggregate
    a = block.attn_channels
    aggregate_bytes = 4 * (2 * a + 2 * c) * hw * hw  # q, k, v read once; output written once
    bandwidth = memory_bandwidth_gbs()
    floor = conv_macs / rate + aggregate_bytes / (bandwidth * 1e6)
    breakdown = op_breakdown(split, x, 100)

    print(f"one deploy block, {c} ch, {hw}x{hw}, ONNX Runtime CPU on {machine()['cpu']}")
    print(f"conv rate {rate / 1e6:.2f} GMAC/s (plain 3x3 conv), memory bandwidth {bandwidth:.1f} GB/s")
    print(f"floor {floor:.3f} ms = {conv_macs / 1e6:.1f} MMACs of convs "
          f"+ {aggregate_bytes / 1e6:.2f} MB of aggregate traffic")
    for name, ms in times.items():
        print(f"  {name:34} {ms:8.3f} ms  {ms / floor:5.2f}x floor")
    print("deploy split by op type (profiler, ms per call):")
    for op, ms in breakdown.items():
        print(f"  {op:20} {ms:7.3f}")
    write_json("block_floor", {
        "benchmark": "block_floor", "machine": machine(), "channels": c, "size": hw,
        "conv_rate_gmacs": rate / 1e6, "memory_bandwidth_gbs": bandwidth, "conv_macs": conv_macs,
        "aggregate_bytes": aggregate_bytes, "floor_ms": floor, "median_ms": times,
        "vs_floor": {k: v / floor for k, v in times.items()}, "deploy_split_ops_ms": breakdown,
        "rewrite_rel_l2": error,
    })


if __name__ == "__main__":
    main()
