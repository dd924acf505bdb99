"""The `quantkit` command (cli/app.py), composed from one module per command group."""
from quantkit.cli.app import app, main

__all__ = ["app", "main"]
