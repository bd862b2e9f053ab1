"""UserError (a one-line message for bad input) and run_cli, which prints it instead of a traceback."""
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A problem with the user's input: files, options or checkpoints. Printed as one line, never a traceback."""


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's main(argv) and turn a UserError into `error: <message>` and exit status 2."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
