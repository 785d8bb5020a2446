"""The exported graph's structure against the fold: the Conv nodes it planned, and exactly the BatchNorms it left.

A fold leaves a BatchNorm only with a reason (after a residual add or a ReLU, no conv or linear can absorb it);
such a BatchNorm is expected in the graph, kept as a BatchNormalization node or lowered to Mul/Add by the
exporter or a simplifier. Any other BatchNormalization node, or a Conv count other than the fold's, is a
structural fault.
"""

from __future__ import annotations

import ast

import onnx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export import graph_info
from xvol_export.fold.family import deploy_family

_LOWERED = ("Mul", "Add", "Sub", "Div")


def node_module(node: onnx.NodeProto) -> str | None:
    """The module a node was exported from: from the dynamo exporter's name scopes, else from a TorchScript
    node name (``/blocks/blocks.0/bn1/BatchNormalization`` is ``blocks.0.bn1``); None if it names none."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None
    if not node.name.startswith("/"):
        return None
    parts = node.name.split("/")[1:-1]
    dotted = [i for i, part in enumerate(parts) if "." in part]
    start = dotted[-1] if dotted else 0
    return ".".join(parts[start:]) or None


def graph_summary(graph: onnx.ModelProto, deploy: nn.Module, left: dict[str, str] | None,
                  raw: onnx.ModelProto | None = None) -> dict:
    """Nodes, ops, input dims, the Conv nodes against the fold's plan, and where each BatchNorm the fold left
    went (``left``: the fold's reason for each, by name; None for a deploy checkpoint, whose fold is not known:
    then every BatchNorm ``deploy`` holds). ``raw``: the graph as exported, before simplification, whose node
    names or scopes say which module each node came from."""
    ops = graph_info.op_counts(graph)
    return {
        "nodes": len(graph.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "input_dims": graph_info.input_dims(graph),
        "conv_nodes": ops.get("Conv", 0),
        "conv_modules": planned_convs(deploy),
        "batchnorm_nodes": ops.get("BatchNormalization", 0),
        **batchnorms_in_graph(graph, left if left is not None else _batchnorms_of(deploy), raw),
        "bytes": graph.ByteSize(),
    }


def planned_convs(deploy: nn.Module) -> int:
    """The Conv nodes the graph should hold: each deploy block's, as its family counts them, and every other
    conv module (a transposed conv exports as a ConvTranspose node, not counted)."""
    planned, inside = 0, ()
    for name, module in deploy.named_modules():
        if inside and any(name.startswith(f"{b}.") or not b for b in inside):
            continue
        family = deploy_family(module)
        if family is not None:
            planned += family.graph_convs(module)
            inside += (name,)
        elif isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            planned += 1
    return planned


def _batchnorms_of(deploy: nn.Module) -> dict[str, str]:
    return {name: "left by the fold that made this deploy model" for name, m in deploy.named_modules()
            if isinstance(m, _BatchNorm)}


def batchnorms_in_graph(graph: onnx.ModelProto, left: dict[str, str], raw: onnx.ModelProto | None = None) -> dict:
    """``batchnorms``: each BatchNorm the fold left (``left``: name -> reason), its reason and how the graph
    computes it (``BatchNormalization``, ``Mul/Add`` or ``absent``); ``unexpected_batchnorms``: the
    BatchNormalization nodes that are none of them (by the module they came from; by count where the graph
    does not say)."""
    named = {n.name: node_module(n) for n in (raw or graph).graph.node}
    expected = list(left)
    found: dict[str, list[str]] = {}
    for node in graph.graph.node:
        module = named.get(node.name) or node_module(node)
        if module is not None:
            found.setdefault(module, []).append(node.op_type)
    nodes = [n for n in graph.graph.node if n.op_type == "BatchNormalization"]
    unexpected, unnamed = [], 0
    for node in nodes:
        module = named.get(node.name) or node_module(node)
        if module is None:
            unnamed += 1
        elif module not in expected:
            unexpected.append(f"{node.name} (from {module})")
    placed = []
    for name in expected:
        ops = found.get(name, [])
        how = ("BatchNormalization" if "BatchNormalization" in ops else "Mul/Add" if any(o in _LOWERED for o in ops)
               else "absent")
        placed.append({"name": name, "reason": left[name], "in_graph": how})
    unmatched = sum(1 for p in placed if p["in_graph"] != "BatchNormalization")
    if unnamed > unmatched:  # nodes the graph does not name: more than the fold left unaccounted for
        unexpected.append(f"{unnamed - unmatched} BatchNormalization node(s) the graph does not name")
    return {"batchnorms": placed, "unexpected_batchnorms": unexpected}


def structural_failures(summary: dict) -> list[str]:
    """What the graph holds that the fold did not plan: BatchNormalization nodes it did not leave, or another
    number of Conv nodes."""
    failures = []
    if summary["unexpected_batchnorms"]:
        failures.append(f"the graph holds BatchNormalization node(s) the fold did not leave: "
                        f"{', '.join(summary['unexpected_batchnorms'])}")
    if summary["conv_nodes"] != summary["conv_modules"]:
        failures.append(f"the graph holds {summary['conv_nodes']} Conv node(s) but the fold planned "
                        f"{summary['conv_modules']}")
    return failures
