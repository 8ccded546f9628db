"""The one way the CLI makes a rich Console, so a closed pipe ends every command alike.

Rich's own answer to a broken pipe (`Console.on_broken_pipe`) is `SystemExit(1)`, which
made `gotapi-3dp jobs | head -1` fail although the reader simply had enough. Raising the
BrokenPipeError instead lets `cli.main` tell a reader that left (exit 0, quietly) from a
real error, as it does for everything else written to stdout.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console


class _PipeAwareConsole(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True          # nothing more to print; main() decides the exit code
        raise BrokenPipeError


def console(**options: Any) -> Console:
    """A Console for stdout; `options` as rich's (e.g. `highlight=False`)."""
    return _PipeAwareConsole(**options)
