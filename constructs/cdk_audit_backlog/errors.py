"""The error every operator command reports in one line (the CLI exits 2 for it)."""


class CliError(Exception):
    """An error the CLI reports in one line and exits 2 for."""
