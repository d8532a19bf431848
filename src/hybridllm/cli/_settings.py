"""A command's options made from a settings model (``hybridllm.serve.settings.ServeSettings``): one
option per field, named by :func:`~hybridllm.serve.settings.flag_name`, typed as the field (less
``None``), its help the field's description and its shown default the field's. Each option's own
default is None, so a flag not given leaves the ``--config`` file's value (or the setting's default)
in place."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from hybridllm.serve.settings import Flag, flag_name


def _flag(info: FieldInfo) -> Flag:
    return next((m for m in info.metadata if isinstance(m, Flag)), Flag())


def cli_type(name: str, info: FieldInfo) -> Any:
    """The option's type: the field's without ``None``; a list stays a list (repeat the flag); a
    ``Literal`` is taken as its values' type and checked with the rest of the settings."""
    given = _flag(info).type
    if given is not None:
        return given
    hint = info.annotation
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"setting {name}: a union of {args} needs Flag(type=...) for the command line")
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    if typing.get_origin(hint) is list or hint in (str, int, float, bool, Path):
        return hint
    raise TypeError(f"setting {name}: {hint!r} has no command-line form; give Flag(type=...)")


def shown_default(name: str, info: FieldInfo) -> str | bool:
    """What ``--help`` and docs/cli.md give as the default (False: none to show)."""
    default = info.get_default(call_default_factory=True)
    if default is None or default == []:
        return False
    if isinstance(default, bool):
        flag = flag_name(name)
        return flag if default else "--no-" + flag[2:]
    return str(default)


def option(name: str, info: FieldInfo) -> inspect.Parameter:
    """The keyword parameter typer reads as the option of setting ``name``."""
    kind, flag = cli_type(name, info), flag_name(name)
    opt = typer.Option(
        f"{flag}/--no-{flag[2:]}" if kind is bool else flag,
        help=info.description,
        envvar=_flag(info).env,
        show_default=shown_default(name, info),
        show_envvar=_flag(info).env is not None,
        metavar="" if kind is bool else None,  # a flag takes no value: no `<bool>` after it
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, opt])


def with_settings(
    model: type[BaseModel], before: list[inspect.Parameter], after: list[inspect.Parameter]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command ``fn(**kw)`` the parameters ``before``, one option per field of ``model``,
    then ``after``; ``fn`` gets every value by its parameter's name (a setting: its field's)."""
    params = [*before, *(option(n, f) for n, f in model.model_fields.items()), *after]

    def apply(fn: Callable[..., None]) -> Callable[..., None]:
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return fn

    return apply


def given(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The settings among ``values`` that the command line gave (None, or a list flag not
    repeated: not given)."""
    return {k: v for k, v in values.items() if k in model.model_fields and v is not None and v not in ([], ())}
