"""`python -m sertool` is the `sertool` command."""
from sertool.cli.commands import main

if __name__ == "__main__":
    main()
