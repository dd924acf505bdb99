"""Errors a user can cause. The CLI prints each as one line on stderr and exits non-zero.

Anything that is not a QuantkitError is a bug and keeps its traceback.
"""
from __future__ import annotations

import re


class QuantkitError(Exception):
    """A problem with the user's input or environment: one line naming the problem and the fix."""

    exit_code = 1


class SourceError(QuantkitError):
    """The source checkpoint cannot be used."""


class OutputError(QuantkitError):
    """The output location cannot be used."""


class InputError(QuantkitError):
    """A file, text or option given by the user is wrong."""


class Interrupted(QuantkitError):
    """Ctrl-C or SIGTERM during work; the partial output has been removed."""

    exit_code = 130


class OptionsError(InputError):
    """A problem with a backend's options. Its text names options as `{field}` or `{field=value}`:
    shown as flags on the command line (`--engine llamacpp`) and as recipe keys in a recipe
    (`engine: llamacpp`), so each reader sees the names they wrote."""

    field: str | None = None

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(options_text(problem, recipe=False))

    def in_recipe(self, where: str) -> str:
        """`where` names the recipe, line and artifact: 'recipe.yaml:12: artifacts[1].options'."""
        return f"{where}: {options_text(self.problem, recipe=True)}"


class OptionError(OptionsError):
    """One option's value is wrong: `--head-bits 7: problem` on the command line,
    `r.yaml:12: artifacts[0].options.head_bits: 7: problem` in a recipe."""

    def __init__(self, field: str, value, problem: str):
        self.field, self.value, self.problem = field, value, problem
        InputError.__init__(self, f"{flag_name(field)} {value}: {options_text(problem, recipe=False)}")

    def in_recipe(self, where: str) -> str:
        return f"{where}.{self.field}: {self.value!r}: {options_text(self.problem, recipe=True)}"


_OPTION_REF = re.compile(r"\{([a-z][a-z0-9_]*)(?:=([^}]*))?\}")


def options_text(text: str, recipe: bool) -> str:
    """`{field}` and `{field=value}` in an options problem, as flags or as recipe keys."""
    def name(m: re.Match) -> str:
        field, value = m.group(1), m.group(2)
        if recipe:
            return f"`{field}: {value}`" if value is not None else f"`{field}`"
        return f"{flag_name(field)} {value}" if value is not None else flag_name(field)

    return _OPTION_REF.sub(name, text)


def flag_name(field: str) -> str:
    """The command-line flag of an options field."""
    return "--" + field.replace("_", "-")


def validation_problem(err: dict) -> str:
    """One pydantic validation error as a problem in plain words (without the field's name, which
    the CLI shows as a flag and a recipe as a field with its line)."""
    kind = err.get("type")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field; check its spelling against recipes/README.md"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]
