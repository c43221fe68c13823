"""The ``sendwise`` subcommands (Typer) of the application layer; the domain packages never import them.

``features/cli.py`` and ``training/cli.py`` are still to move here (see ``[tool.importlinter]``)."""
