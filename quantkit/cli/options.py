"""A backend's command line, derived from its options model (quantkit/backends/base.py Options).

Each field becomes one option: `--field-name` (plus the field's `short` flag), its description
the help, its default the default, a Literal's values the choices shown, its numeric bounds
click's range. Values are checked by the model itself (ranges by click first), and a bad one is
a usage error naming the flag.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Optional

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


def _bounds(info: FieldInfo) -> dict:
    """click's range for a numeric field's inclusive pydantic bounds (so --help shows them); strict
    bounds (bpw > 0) are left to the model."""
    out = {}
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            out["min"] = m.ge
        if getattr(m, "le", None) is not None:
            out["max"] = m.le
    return out


def parameters(model: type[Options]) -> list[inspect.Parameter]:
    """typer parameters for every field of `model`, in the model's order."""
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = [flag_name(name)] + ([extra["short"]] if extra.get("short") else [])
        kind = _cli_type(info.annotation)
        shown = {}
        if typing.get_origin(info.annotation) is Literal:  # the model checks the value; the help lists them
            shown["metavar"] = "[" + "|".join(map(str, typing.get_args(info.annotation))) + "]"
        option = typer.Option(*flags, help=_help(info), show_default=info.default is not None and kind is not bool,
                              **shown, **(_bounds(info) if kind in (int, float) else {}))
        out.append(inspect.Parameter(f"opt_{name}", inspect.Parameter.KEYWORD_ONLY,
                                     default=info.default, annotation=Annotated[kind, option]))
    return out


UsageError = typer.BadParameter.__base__  # typer >= 0.29 raises its own copy of click's UsageError


def build(model: type[Options], values: dict, ctx: typer.Context | None = None) -> Options:
    """The options model from parsed flags (`opt_<field>` keys); a bad value is a usage error."""
    given = {k.removeprefix("opt_"): v for k, v in values.items()}
    try:
        return model(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise UsageError(f"{flag_name(field)} {given.get(field)}: {validation_problem(err)}", ctx=ctx) from None
