"""A backend's command line, derived from its options model (quantkit/backends/base.py Options).

Each field becomes one option: `--field-name` (plus the field's `short` flag), its description
the help, its default the default, a Literal's values the choices shown. Values are checked
by the model itself, and a bad one is a usage error naming the flag.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Optional

import click
import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from quantkit.backends.base import Options
from quantkit.errors import flag_name, validation_problem


def _cli_type(annotation: Any) -> Any:
    """The type typer parses the flag as; the model does the real checking."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return Optional[_cli_type(args[0])] if len(args) == 1 else str
    return annotation if annotation in (int, float, str, bool) else str


def _help(info: FieldInfo) -> str:
    return info.description or ""


def parameters(model: type[Options]) -> list[inspect.Parameter]:
    """typer parameters for every field of `model`, in the model's order."""
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = [flag_name(name)] + ([extra["short"]] if extra.get("short") else [])
        kind = _cli_type(info.annotation)
        if kind is bool:
            flags = [flags[0]]
        option = typer.Option(*flags, help=_help(info), show_default=info.default is not None and kind is not bool)
        out.append(inspect.Parameter(f"opt_{name}", inspect.Parameter.KEYWORD_ONLY,
                                     default=info.default, annotation=Annotated[kind, option]))
    return out


def build(model: type[Options], values: dict) -> Options:
    """The options model from parsed flags (`opt_<field>` keys); a bad value is a usage error."""
    given = {k.removeprefix("opt_"): v for k, v in values.items()}
    try:
        return model(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise click.UsageError(f"{flag_name(field)} {given.get(field)}: {validation_problem(err)}",
                               ctx=click.get_current_context(silent=True)) from None
