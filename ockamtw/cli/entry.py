"""
The C{ockam} console script.  It imports the command line inside a guard:
Ctrl-C while the command line is still loading (a second or so on a slow
machine) ends with the same one line and status as Ctrl-C later on,
instead of a traceback.
"""

import signal
import sys

#: The exit status after Ctrl-C (128 + SIGINT); the same as the command line's.
INTERRUPTED = 130


def main() -> None:
    pressed = []

    def note(signum, frame) -> None:
        # Not KeyboardInterrupt: raised in the middle of an import it can
        # land in a finalizer or a weakref callback, where Python prints it
        # as "Exception ignored" and goes on.
        pressed.append(signum)

    default = signal.getsignal(signal.SIGINT)
    if default is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, note)
    try:
        from .main import main as run
    except KeyboardInterrupt:
        pressed.append(signal.SIGINT)
    if default is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, default)
    if pressed:
        try:
            print("ockam: interrupted", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        raise SystemExit(INTERRUPTED)
    run()
