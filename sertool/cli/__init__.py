"""The `sertool` command line (``commands``), its flags made from the options dataclasses (``flags``; the options of
the commands whose library code is elsewhere: ``options``) and its console output (``console``)."""
from sertool.cli.commands import cli, main

__all__ = ["cli", "main"]
