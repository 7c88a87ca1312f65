"""
The C{ockam} console script.  It imports the command line inside a guard:
Ctrl-C while the command line is still loading (a second or so on a slow
machine) ends with the same one line and status as Ctrl-C later on,
instead of a traceback.
"""

import sys

#: The exit status after Ctrl-C (128 + SIGINT); the same as the command line's.
INTERRUPTED = 130


def main() -> None:
    try:
        from .main import main as run
    except KeyboardInterrupt:
        try:
            print("ockam: interrupted", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        raise SystemExit(INTERRUPTED)
    run()
