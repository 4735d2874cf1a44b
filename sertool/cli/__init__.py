"""The `sertool` command line (``commands``) and its console output (``console``)."""
from sertool.cli.commands import cli, main

__all__ = ["cli", "main"]
