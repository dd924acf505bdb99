"""Errors a user can cause. The CLI prints each as one line on stderr and exits non-zero.

Anything that is not a QuantkitError is a bug and keeps its traceback.
"""
from __future__ import annotations


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


class OptionError(InputError):
    """One option's value is wrong: named as the CLI flag (`--head-bits 7: ...`) by default, and
    as the recipe field (`artifacts[0].options.head_bits`) where a recipe gave it (`recipe_line`)."""

    def __init__(self, field: str, value, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{flag_name(field)} {value}: {problem}")

    def in_recipe(self, where: str) -> str:
        """`where` names the recipe, line and artifact: 'recipe.yaml:12: artifacts[1].options'."""
        return f"{where}.{self.field}: {self.value!r}: {self.problem}"


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
