"""TensorRT optimization profiles: the (min, opt, max) shape of every input that an engine accepts.

``--min-shapes``/``--opt-shapes``/``--max-shapes`` are repeatable: their i-th values make profile i.
A value is one input's shape in the syntax of ``--input-shape`` (``input:1x3x224x224``; the name may be
left out when the graph has one input); several inputs of one profile are separated by ``;``.
"""

from __future__ import annotations

from dataclasses import dataclass

from xvol_export.errors import XvolError
from xvol_export.inputs import parse_shape

Shape = tuple[int, ...]
GraphShape = tuple[int | None, ...]  # a graph input's declared shape; None where it is dynamic


@dataclass(frozen=True)
class InputRange:
    """The shapes one input may take in a profile: ``min`` <= ``opt`` <= ``max``, dimension by dimension."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True))

    def describe(self) -> str:
        def text(s: Shape) -> str:
            return "x".join(map(str, s))

        return f"{self.name}: min {text(self.min)}, opt {text(self.opt)}, max {text(self.max)}"

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: a range for every input of the graph."""

    ranges: tuple[InputRange, ...]

    def range_of(self, name: str) -> InputRange | None:
        return next((r for r in self.ranges if r.name == name), None)

    def to_dict(self) -> dict:
        return {r.name: r.to_dict() for r in self.ranges}

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeProfile":
        return cls(tuple(InputRange(name, tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))
                         for name, r in data.items()))


def _parse_profile_value(text: str, option: str, inputs: dict[str, GraphShape]) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for part in (p for p in text.split(";") if p.strip()):
        parsed = parse_shape(part)
        name = parsed.name
        if name is None:
            if len(inputs) != 1:
                raise XvolError(f"{option} '{text}': the graph has {len(inputs)} inputs ({', '.join(inputs)}); "
                                "name each, as in input:1x3x224x224;mask:1x1x224x224.")
            name = next(iter(inputs))
        if name not in inputs:
            raise XvolError(f"{option} '{text}': the graph has no input '{name}' (its inputs: {', '.join(inputs)}).")
        if name in shapes:
            raise XvolError(f"{option} '{text}': input '{name}' is given twice in one profile.")
        shapes[name] = parsed.dims
    if not shapes:
        raise XvolError(f"{option} '{text}' gives no shape.")
    return shapes


def _check_counts(min_shapes: list[str], opt_shapes: list[str], max_shapes: list[str]) -> None:
    if len(min_shapes) != len(max_shapes) or (opt_shapes and len(opt_shapes) != len(min_shapes)):
        raise XvolError(f"Give --min-shapes and --max-shapes (and --opt-shapes, if any) once per profile: got "
                        f"{len(min_shapes)} --min-shapes, {len(opt_shapes)} --opt-shapes and {len(max_shapes)} "
                        "--max-shapes.")


def check_shape_options(min_shapes: list[str], opt_shapes: list[str], max_shapes: list[str]) -> None:
    """What can be checked before the graph exists: counts, syntax, and min <= opt <= max for every input
    each profile names (by name, or unnamed for a one-input graph). :class:`XvolError` otherwise."""
    _check_counts(min_shapes, opt_shapes, max_shapes)
    for index, (low, high) in enumerate(zip(min_shapes, max_shapes, strict=True)):
        values = [low, opt_shapes[index] if opt_shapes else high, high]
        parsed = [{shape.name: shape.dims for shape in map(parse_shape, (p for p in v.split(";") if p.strip()))}
                  for v in values]
        for name, low_dims in parsed[0].items():
            mid_dims, high_dims = parsed[1].get(name), parsed[2].get(name)
            if mid_dims is None or high_dims is None or not len(low_dims) == len(mid_dims) == len(high_dims):
                continue  # left to the check against the graph, which can name what is missing
            check_range(InputRange(name or "input", low_dims, mid_dims, high_dims), (None,) * len(low_dims), index)


def parse_profiles(inputs: dict[str, GraphShape], min_shapes: list[str], opt_shapes: list[str],
                   max_shapes: list[str]) -> list[ShapeProfile]:
    """Profiles from repeated ``--min-shapes``/``--opt-shapes``/``--max-shapes`` for a graph with ``inputs``.

    ``--opt-shapes`` may be left out (then opt = max). Every input needs a range in every profile
    (a static input gets its own shape); each range must fit the graph's static dimensions and
    satisfy min <= opt <= max. :class:`XvolError` says which value breaks which rule.
    """
    if not min_shapes and not max_shapes and not opt_shapes:
        return []
    _check_counts(min_shapes, opt_shapes, max_shapes)
    profiles = []
    for index, (low, high) in enumerate(zip(min_shapes, max_shapes, strict=True)):
        mins = _parse_profile_value(low, "--min-shapes", inputs)
        maxs = _parse_profile_value(high, "--max-shapes", inputs)
        opts = _parse_profile_value(opt_shapes[index], "--opt-shapes", inputs) if opt_shapes else maxs
        ranges = []
        for name, declared in inputs.items():
            given = [name in mins, name in opts, name in maxs]
            if not any(given) and all(d is not None for d in declared):
                static = tuple(int(d) for d in declared if d is not None)
                ranges.append(InputRange(name, static, static, static))
                continue
            if not all(given):
                raise XvolError(f"Profile {index + 1}: input '{name}' needs a shape in each of --min-shapes, "
                                "--opt-shapes and --max-shapes (it has dynamic dimensions).")
            ranges.append(check_range(InputRange(name, mins[name], opts[name], maxs[name]), declared, index))
        profiles.append(ShapeProfile(tuple(ranges)))
    return profiles


def check_range(shape_range: InputRange, declared: GraphShape, index: int = 0) -> InputRange:
    """``shape_range`` if it fits the graph's ``declared`` shape and min <= opt <= max; else :class:`XvolError`."""
    where = f"Profile {index + 1}, input '{shape_range.name}'"
    for label, shape in (("min", shape_range.min), ("opt", shape_range.opt), ("max", shape_range.max)):
        if len(shape) != len(declared):
            raise XvolError(f"{where}: the {label} shape {'x'.join(map(str, shape))} has {len(shape)} dimensions; "
                            f"the graph's input has {len(declared)} ({_declared(declared)}).")
        for axis, (dim, want) in enumerate(zip(shape, declared, strict=True)):
            if want is not None and dim != want:
                raise XvolError(f"{where}: the {label} shape has {dim} in dimension {axis}, which the graph fixes "
                                f"at {want} ({_declared(declared)}). Export with --dynamic to vary it.")
    for axis, (lo, mid, hi) in enumerate(zip(shape_range.min, shape_range.opt, shape_range.max, strict=True)):
        if not lo <= mid <= hi:
            raise XvolError(f"{where}: dimension {axis} must satisfy min <= opt <= max, but it is "
                            f"{lo}, {mid}, {hi} ({shape_range.describe()}).")
    return shape_range


def _declared(declared: GraphShape) -> str:
    return "x".join("?" if d is None else str(d) for d in declared)


def default_profiles(inputs: dict[str, GraphShape], batch: int, imgsz: tuple[int, int] | None) -> list[ShapeProfile]:
    """One profile from ``--batch`` and ``--imgsz``: a static graph's own shapes; a dynamic batch from 1 to
    ``batch`` (tuned for ``batch``); dynamic height and width at ``imgsz``, which they then need."""
    ranges = []
    for name, declared in inputs.items():
        low: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(declared):
            if dim is not None:
                low.append(dim)
                high.append(dim)
            elif axis == 0:
                low.append(1)
                high.append(batch)
            elif len(declared) == 4 and axis in (2, 3) and imgsz is not None:
                low.append(imgsz[axis - 2])
                high.append(imgsz[axis - 2])
            else:
                raise XvolError(f"Input '{name}' ({_declared(declared)}) has a dynamic dimension {axis}: give its "
                                "range with --min-shapes/--opt-shapes/--max-shapes (or --imgsz for height and width).")
        ranges.append(InputRange(name, tuple(low), tuple(high), tuple(high)))
    return [ShapeProfile(tuple(ranges))]


def profile_index_for(profiles: list[ShapeProfile], shapes: dict[str, Shape], label: str) -> int:
    """The first profile that takes every input's shape; :class:`XvolError` naming each profile's range if none."""
    for index, profile in enumerate(profiles):
        if all((r := profile.range_of(name)) is not None and r.contains(shape) for name, shape in shapes.items()):
            return index
    given = ", ".join(f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items())
    ranges = "; ".join(f"profile {i + 1}: " + ", ".join(r.describe() for r in p.ranges)
                       for i, p in enumerate(profiles))
    raise XvolError(f"{label}: the inputs ({given}) fit none of the engine's optimization profiles ({ranges}). "
                    "Use inputs in one of those ranges, or rebuild the engine with --min-shapes/--max-shapes "
                    "covering them.")
