"""The machine a verdict is made on: the CPU and the instruction-set features that change numerical results.

oneDNN (PyTorch, OpenVINO) and ONNX Runtime choose their kernels by these features, so rounding order, int8
saturation and a runtime's default precision follow them: a verdict holds for the ISA it was made on.
"""

from __future__ import annotations

import platform

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


def cpu_isa() -> str:
    """One line: the CPU's model and its result-changing features, e.g. ``AMD EPYC (AVX2, FMA, AVX-512F)``."""
    features = cpu_features()
    return f"{cpu_name()} ({', '.join(features) if features else 'no AVX2'})"
