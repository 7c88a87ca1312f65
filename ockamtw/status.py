"""
The statuses ockamtw reports, spelled once.

Relays, inlets, secure channels and nodes say how they are with these
words, in capitals, as the control API and the command line show them
(Ockam 0.83's spelling).  The state machines behind them (a relay's
C{state}, a channel end's C{state}) have their own, finer, state names;
a status is what they mean to a user.

A leaf module: it imports nothing of ockamtw.
"""

#: Working: a relay registered, an inlet whose route is reachable, a secure
#: channel whose handshake is done, a node that answers.
UP = "UP"
#: Not working now, and trying (a relay, an inlet), or stopped (a node).
DOWN = "DOWN"
#: Ended for good (a secure channel).
CLOSED = "CLOSED"
#: A node whose process runs but does not answer.
UNRESPONSIVE = "UNRESPONSIVE"
#: A node whose state on disk cannot be used.
BROKEN = "BROKEN"


def title(status: str) -> str:
    """
    C{status} title-cased (C{Down}): how the command line shows the inlets
    and relays of a stopped node, as it always has.
    """
    return status.title()
