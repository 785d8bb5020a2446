"""The floor of one deploy X-volution block on CPU, where its time goes, and the exact rewrites tried.

Floor: the block's multiply-adds at the rate a plain 3x3 conv of the same width reaches here,
plus the attention aggregate's minimum memory traffic (read q, k, v once, write the output once)
at the measured memory bandwidth; computed for ONNX Runtime and for PyTorch eager, each with its
own conv rate. ONNX Runtime's profiler and PyTorch's profiler split the split deploy block's time
by op type. Every rewrite below is checked exact (relative L2 against the training form) and
exported with standard ONNX ops; all variants are timed round-robin at batch 1 and 8.

    python benchmarks/block_floor.py [--channels 256] [--size 14] [--iterations 300]

Prints tables; writes benchmarks/results/block_floor.json and block_floor.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from xvol_export import XVolution, XVolutionDeploy
from xvol_export.export import onnx_graph
from xvol_export.fold import fold_xvolution
from xvol_export.fold.profile import profile_model
from xvol_export.layers import shifted_copies
from xvol_export.testing import randomize_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, time_interleaved, write_json  # noqa: E402


def aggregate_as_one_conv(q, kv, attn_channels, shift):
    """Rewrite: as above with k and v shifted by a single grouped conv."""
    shifted = shifted_copies(kv, shift)
    weights = torch.softmax((q.unsqueeze(2) * shifted[:, :attn_channels]).sum(1), dim=1)
    return (shifted[:, attn_channels:] * weights.unsqueeze(1)).sum(2)


def aggregate_as_matmul(q, k, v, shift):
    """Rewrite: the weighted sum of the shifted values as one batched MatMul over pixels."""
    n, o, h, w = v.shape
    weights = torch.softmax((q.unsqueeze(2) * shifted_copies(k, shift)).sum(1), dim=1)
    values = shifted_copies(v, shift).view(n, o, 9, h * w).permute(0, 3, 1, 2)  # N, HW, O, 9
    return (values @ weights.view(n, 9, h * w).permute(0, 2, 1).unsqueeze(-1)).squeeze(-1).permute(0, 2, 1).reshape(
        n, o, h, w)


class RewrittenAggregate(XVolutionDeploy):
    """The split deploy block with its aggregate computed by a rewrite that was tried and not adopted."""

    def __init__(self, rewrite: str, **config):
        super().__init__(**config)
        self.rewrite = rewrite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_channels
        p = self.proj(x)
        static = self.conv(x) + self.dconv(x)
        if self.rewrite == "one conv":
            return static + aggregate_as_one_conv(p[:, :a], p[:, a:], a, self.shift)
        q, k, v = torch.split(p, [a, a, self.out_channels], dim=1)
        return static + aggregate_as_matmul(q, k, v, self.shift)


REWRITES = {
    "deploy split": "the fold's deploy form: 3x3 conv + dilated 5x5 conv + 1x1 proj + 27-Slice aggregate",
    "split, aggregate as one-hot convs": "the 27 Slices as two one-hot grouped convs (aggregate='convs': "
                                         "what `xvol export` writes)",
    "split, aggregate as one one-hot conv": "k and v shifted by one grouped conv (not adopted)",
    "split, aggregate value sum as MatMul": "the weighted value sum as a batched MatMul over pixels (not adopted)",
    "split, dilated conv by phases": "the 5x5 dilation-2 conv as a dense conv on the 4 phase images "
                                     "(dilated_conv='phases': PyTorch on CPU)",
}


def session(model: nn.Module, shape, profile_dir: str | None = None) -> ort.InferenceSession:
    graph = onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(model, shape)))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions take turns
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "profile")
    return ort.InferenceSession(graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def median_ms(calls: dict[str, Callable[[], object]], iterations: int) -> dict[str, float]:
    """Median ms per call, the calls timed round-robin."""
    return {name: t["median_ms"] for name, t in time_interleaved(calls, iterations, warmup=10).items()}


def torch_op_breakdown(model: nn.Module, x: torch.Tensor, iterations: int) -> dict[str, float]:
    """Median-free mean per-call self CPU time of each aten op, from PyTorch's profiler (ms)."""
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iterations):
                model(x)
    per_op = {e.key: e.self_cpu_time_total / 1e3 / iterations for e in prof.key_averages()}
    return {op: ms for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]) if ms >= 0.005}


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


def variants(c: int) -> tuple[XVolution, dict[str, nn.Module]]:
    block = randomize_batchnorm(XVolution(c, c), seed=1).eval()
    split = fold_xvolution(block, "split")
    out = {"training form": block, "deploy split": split}
    out["split, aggregate as one-hot convs"] = fold_xvolution(block, "split", aggregate="convs")
    for name, rewrite in (("split, aggregate as one one-hot conv", "one conv"),
                          ("split, aggregate value sum as MatMul", "matmul")):
        model = RewrittenAggregate(rewrite, **split.config())
        model.load_state_dict(split.state_dict())
        out[name] = model.eval()
    out["split, dilated conv by phases"] = fold_xvolution(block, "split", "phases")
    return block, out


def markdown(payload: dict) -> str:
    lines = [f"# One deploy block against its floor on {payload['machine']['cpu']}", "",
             f"{payload['channels']} channels, {payload['size']}x{payload['size']}, median ms per call "
             "(variants timed round-robin) and the ratio to the runtime's floor at that batch. Every rewrite "
             f"is exact (relative L2 to the training form at most {max(payload['rel_l2'].values()):.1e}).", ""]
    for runtime, r in payload["runtimes"].items():
        lines += [f"## {runtime}", "",
                  f"Floor at batch 1: {r['floor_ms'][1]:.2f} ms ({r['conv_rate_gmacs']:.1f} GMAC/s plain-conv rate). "
                  f"Batch 8 floor: {r['floor_ms'][8]:.2f} ms.", "",
                  "| variant | what | batch 1 ms | x floor | batch 8 ms | x floor |", "|---|---|---|---|---|---|"]
        for name, what in [("training form", "three branches with BatchNorm"), *REWRITES.items()]:
            b1, b8 = r["median_ms"][1][name], r["median_ms"][8][name]
            lines.append(f"| {name} | {what} | {b1:.2f} | {b1 / r['floor_ms'][1]:.2f} | {b8:.2f} | "
                         f"{b8 / r['floor_ms'][8]:.2f} |")
        lines.append("")
        lines += [f"Where the time goes in {r['shipped']} (the form used on this runtime), by op type "
                  "(profiler, ms per call at batch 1):", ""]
        lines += [f"- {op}: {ms:.3f}" for op, ms in list(r["shipped_ops_ms"].items())[:8]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--iterations", type=int, default=300, help="rounds at batch 1 (a tenth at batch 8)")
    args = parser.parse_args()
    c, hw = args.channels, args.size
    block, models = variants(c)
    plain = nn.Conv2d(c, c, 3, padding=1).eval()

    rel_l2 = {}
    probe = torch.randn(2, c, hw, hw, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = block(probe)
        for name, model in models.items():
            rel_l2[name] = float((model(probe) - ref).norm() / ref.norm())
    assert max(rel_l2.values()) < 1e-5, f"a rewrite is not exact: {rel_l2}"

    macs = profile_model(models["deploy split"], (1, c, hw, hw)).macs
    aggregate = next(v for k, v in macs.items() if k.endswith("<extra>"))
    conv_macs = sum(macs.values()) - aggregate
    a = block.attn_channels
    aggregate_bytes = 4 * (2 * a + 2 * c) * hw * hw  # q, k, v read once; output written once
    bandwidth = memory_bandwidth_gbs()
    plain_macs = c * c * 9 * hw * hw

    runtimes = {}
    for runtime in ("onnxruntime", "pytorch eager"):
        times, floor = {}, {}
        for batch in (1, 8):
            shape = (batch, c, hw, hw)
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            everything = {"plain 3x3 conv": plain, **models}
            if runtime == "onnxruntime":
                sessions = {name: session(m, shape) for name, m in everything.items()}
                calls = {name: (lambda s=s, x=x: s.run(None, {"input": x})) for name, s in sessions.items()}
                times[batch] = median_ms(calls, args.iterations if batch == 1 else args.iterations // 10)
            else:
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    calls = {name: (lambda m=m, xt=xt: m(xt)) for name, m in everything.items()}
                    times[batch] = median_ms(calls, args.iterations if batch == 1 else args.iterations // 10)
            rate = batch * plain_macs / times[batch]["plain 3x3 conv"]  # MACs per ms
            floor[batch] = batch * conv_macs / rate + batch * aggregate_bytes / (bandwidth * 1e6)
            if batch == 1:
                conv_rate = rate
        x1 = np.random.default_rng(0).standard_normal((1, c, hw, hw), dtype=np.float32)
        # Profile the form each runtime gets: the exported graph's, and TORCH_CPU_OPTIONS in PyTorch.
        if runtime == "onnxruntime":
            shipped = "split, aggregate as one-hot convs"
            ops = op_breakdown(models[shipped], x1, 100)
        else:
            shipped = "split, dilated conv by phases"
            ops = torch_op_breakdown(models[shipped], torch.from_numpy(x1), 100)
        runtimes[runtime] = {"conv_rate_gmacs": conv_rate / 1e6, "floor_ms": floor, "median_ms": times,
                             "vs_floor": {b: {k: v / floor[b] for k, v in t.items()} for b, t in times.items()},
                             "shipped": shipped, "shipped_ops_ms": ops}

    print(f"one deploy block, {c} ch, {hw}x{hw}, on {machine()['cpu']}; memory bandwidth {bandwidth:.1f} GB/s; "
          f"{conv_macs / 1e6:.1f} MMACs of convs + {aggregate_bytes / 1e6:.2f} MB of aggregate traffic per image")
    for runtime, r in runtimes.items():
        print(f"\n{runtime}: conv rate {r['conv_rate_gmacs']:.2f} GMAC/s (plain 3x3 conv), "
              f"floor {r['floor_ms'][1]:.3f} ms at batch 1, {r['floor_ms'][8]:.3f} ms at batch 8")
        print(f"  {'variant':38} {'b1 ms':>8} {'x floor':>8} {'b8 ms':>8} {'x floor':>8}")
        for name in r["median_ms"][1]:
            b1, b8 = r["median_ms"][1][name], r["median_ms"][8][name]
            print(f"  {name:38} {b1:8.3f} {b1 / r['floor_ms'][1]:8.2f} {b8:8.3f} {b8 / r['floor_ms'][8]:8.2f}")
        print(f"  {r['shipped']} by op type (profiler, ms per call, batch 1):")
        for op, ms in list(r["shipped_ops_ms"].items())[:8]:
            print(f"    {op:28} {ms:7.3f}")
    payload = {
        "benchmark": "block_floor", "machine": machine(), "channels": c, "size": hw,
        "memory_bandwidth_gbs": bandwidth, "conv_macs": conv_macs, "aggregate_bytes": aggregate_bytes,
        "rewrites": REWRITES, "rel_l2": rel_l2, "runtimes": runtimes,
    }
    write_json("block_floor", payload)
    (RESULTS / "block_floor.md").write_text(markdown(payload) + "\n")


if __name__ == "__main__":
    main()
