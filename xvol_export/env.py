"""The machine a verdict is made on: the CPU and the instruction-set features that change numerical results.

oneDNN (inside PyTorch and OpenVINO) and ONNX Runtime choose their kernels by these features, so rounding
order, int8 saturation and a runtime's default precision follow them: a verdict holds for the ISA it was
made on. ``ONEDNN_MAX_CPU_ISA`` caps what oneDNN uses (PyTorch's and OpenVINO's kernels), not what ONNX
Runtime's own kernels use; both are reported. Nothing here imports PyTorch or a runtime.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

# The /proc/cpuinfo flags that change results, in the words users know them by.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
VNNI = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8")  # int8 dot products summed in int32: no saturation
NATIVE_BF16 = ("AVX512-BF16", "AMX-BF16")
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA), lowest first, with the features each allows at most.
_ONEDNN_CAPS = {
    "SSE41": (),
    "AVX": (),
    "AVX2": ("AVX2", "FMA"),
    "AVX2_VNNI": ("AVX2", "FMA", "AVX-VNNI"),
    "AVX2_VNNI_2": ("AVX2", "FMA", "AVX-VNNI"),
    "AVX512_CORE": ("AVX2", "FMA", "AVX-512F"),
    "AVX512_CORE_VNNI": ("AVX2", "FMA", "AVX-512F", "AVX512-VNNI"),
    "AVX512_CORE_BF16": ("AVX2", "FMA", "AVX-512F", "AVX512-VNNI", "AVX512-BF16"),
    "AVX512_CORE_FP16": ("AVX2", "FMA", "AVX-512F", "AVX512-VNNI", "AVX512-BF16", "AVX512-FP16", "AVX-VNNI"),
}
PACKAGES = ("torch", "onnxruntime", "openvino", "onnx", "numpy", "tensorrt")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The result-changing ISA features this CPU has (names of :data:`ISA_FLAGS`, in its order)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


def onednn_cap() -> str | None:
    """The ISA cap oneDNN runs under (``ONEDNN_MAX_CPU_ISA``, or its old name ``DNNL_MAX_CPU_ISA``), if set."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip().upper() != "ALL" else None


def onednn_features() -> list[str]:
    """The features oneDNN (PyTorch's and OpenVINO's CPU kernels) may use here: the CPU's, under its cap."""
    features, cap = cpu_features(), onednn_cap()
    if cap is None or cap not in _ONEDNN_CAPS:
        return features
    return [f for f in features if f in _ONEDNN_CAPS[cap]]


def has_vnni(runtime: str = "openvino") -> bool:
    """Whether ``runtime``'s int8 kernels sum u8 x s8 products in int32 (VNNI, AMX) rather than in a saturating
    int16 pair sum: oneDNN's (openvino, torch) under its cap, ONNX Runtime's on the CPU's own features."""
    features = cpu_features() if runtime == "onnxruntime" else onednn_features()
    return any(f in VNNI for f in features)


def native_bf16() -> bool:
    """Whether oneDNN (OpenVINO's CPU plugin, PyTorch) computes bf16 natively here (AVX512-BF16, AMX): where it does
    not, OpenVINO keeps an IR asked for bf16 in f32."""
    return any(f in NATIVE_BF16 for f in onednn_features())


def cpu_isa() -> str:
    """One line: the CPU's model and its result-changing features, with oneDNN's cap where one is set."""
    features, cap = cpu_features(), onednn_cap()
    text = f"{cpu_name()} ({', '.join(features) if features else 'no AVX2'}"
    return text + (f"; oneDNN capped at {cap}: {', '.join(onednn_features()) or 'no AVX2'})" if cap else ")")


def isa_meaning() -> list[str]:
    """What this machine's ISA means for xvol's verdicts, one sentence each (``xvol doctor`` prints them)."""
    lines = []
    for runtime, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO and PyTorch (oneDNN)")):
        if has_vnni(runtime):
            lines.append(f"int8 on {label}: VNNI sums int8 products in int32, no saturation; 8-bit weights are safe.")
        else:
            lines.append(f"int8 on {label}: no VNNI, so u8 x s8 products are summed in pairs in a saturating int16; "
                         "xvol quantizes weights to 7 bits for it (--int8-weight-bits auto) so that no pair can "
                         "saturate.")
    if native_bf16():
        lines.append("bf16: native (AVX512-BF16/AMX): OpenVINO's CPU plugin computes fp32 graphs in bf16 by default; "
                     "xvol pins f32 unless asked for bf16.")
    else:
        lines.append("bf16: no native bf16 here: OpenVINO computes fp32 graphs in f32 by default, and bf16 is "
                     "emulated (slow).")
    return lines


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed versions of ``names`` (those installed), read from their metadata, none imported."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> dict:
    """The machine every report's JSON, the manifest and the Markdown summary name: CPU, ISA features (and
    oneDNN's cap), cores and threads, Python, platform and the runtimes' versions."""
    torch = sys.modules.get("torch")  # its thread count if it is loaded; never imported for this
    threads = torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None
    return {
        "cpu": cpu_name(),
        "isa": cpu_features(),
        "onednn_cap": onednn_cap(),
        "onednn_isa": onednn_features(),
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
    }
