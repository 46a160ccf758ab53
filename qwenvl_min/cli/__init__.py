"""The `qwenvl-min` console script: one module per command, `main` in `qwenvl_min.cli.main`."""

from .main import main

__all__ = ["main"]
