"""The `quantkit` app: commands composed from one module per group; user errors printed in one place (main)."""
from __future__ import annotations

import os
import sys

import click
import typer

# Libraries we call draw their own tqdm bars (compressed-tensors while loading);
# quantkit shows one bar of its own. tqdm reads this when it is first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

from quantkit.cli import convert, inspect_cmd, release, verify_cmd
from quantkit.errors import QuantkitError

app = typer.Typer(
    name="quantkit",
    help="Quantize a BF16 Hugging Face checkpoint to every format the community publishes, and prove each result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold literal [default: ...] brackets
    context_settings={"help_option_names": ["-h", "--help"]},
)
for module in (convert, verify_cmd, inspect_cmd, release):
    module.register(app)


def _usage_error(e: Exception) -> None:
    """A bad command line: one line naming the problem and where the help is; exit 2."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `quantkit` alone: typer has printed the help
        if e.format_message().strip():
            e.show()
        sys.exit(2)
    ctx = getattr(e, "ctx", None)
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"quantkit: error: {message}{hint}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 2) or 2)


def main() -> None:
    """Entry point: a QuantkitError becomes one line on stderr and its exit code
    (QUANTKIT_TRACEBACK=1 shows the traceback instead)."""
    try:
        rv = app(standalone_mode=False)
    except QuantkitError as e:
        if os.environ.get("QUANTKIT_TRACEBACK"):
            raise
        print(f"quantkit: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (click.ClickException, typer.TyperException) as e:
        # typer >= 0.29 raises its own copy of click's exceptions (typer._click), not click's
        _usage_error(e)
    except OSError as e:  # a full disk or an unwritable place met where no quantkit code expected it
        from quantkit.output import DISK_FULL, READ_ONLY, os_error

        if e.errno not in DISK_FULL + READ_ONLY or os.environ.get("QUANTKIT_TRACEBACK"):
            raise
        print(f"quantkit: error: {os_error(e)}", file=sys.stderr)
        sys.exit(1)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        print("quantkit: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
