"""The `quantkit` command: commands composed from one module per group; user errors printed in one place."""
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
    context_settings={"help_option_names": ["-h", "--help"]},
)
for module in (convert, verify_cmd, inspect_cmd, release):
    module.register(app)


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
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("quantkit: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
