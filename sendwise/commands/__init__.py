"""The ``sendwise`` subcommands (Typer) of the application layer; the domain packages never import them."""
