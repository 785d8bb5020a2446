"""Option groups: options several commands take, declared once (a builder function whose parameters are the
options) and offered by each command that names the group in :func:`with_options`."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class OptionGroup:
    """Options several commands take, declared once: ``options`` are the parameters a command gets in place of
    the group's one parameter, and ``build`` makes the library value the command receives from theirs."""

    options: tuple[inspect.Parameter, ...]
    build: Callable[..., Any]


def group(build: Callable[..., Any]) -> OptionGroup:
    """A group from a builder whose parameters are the options (annotated with ``typer.Option``, with defaults)."""
    options = tuple(inspect.signature(build, eval_str=True).parameters.values())
    return OptionGroup(options, build)


def with_options(**groups: OptionGroup):
    """Decorator: each parameter of the command named like a keyword is replaced, on the command line, by that
    group's options; the command receives the group's built value under the parameter's name."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        unknown = set(groups) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{command.__name__} has no parameter {', '.join(sorted(unknown))}")
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            parameters += groups[parameter.name].options if parameter.name in groups else [parameter]

        @functools.wraps(command)
        def run(**values):
            for name, declared in groups.items():
                values[name] = declared.build(**{o.name: values.pop(o.name) for o in declared.options})
            return command(**values)

        run.__signature__ = signature.replace(parameters=parameters)  # what Typer reads
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate
