"""
The default services of a node: C{echo}, C{uppercase} and C{hop}.

Anyone may send to them.  Their answers are messages of this node; what
C{hop} passes on keeps its sender (L{ockamtw.node.BaseNode.forward}), so a
peer cannot use it to make this node connect anywhere or speak for it.
"""

from twisted.logger import Logger

from ..access import ANYONE
from ..errors import WireError
from ..logs import short
from ..node import Worker
from ..wire import decode_string, encode_string

log = Logger(namespace="ockamtw.services")


class Echo(Worker):
    """
    Sends the raw payload back to the return route, unchanged.
    """

    access = ANYONE

    def receive(self, message):
        self.reply(message, message.payload)


class Uppercase(Worker):
    """
    Reads the payload as a BARE string and answers it upper-cased.
    """

    access = ANYONE

    def receive(self, message):
        try:
            text = decode_string(message.payload)
        except WireError as e:
            self.node.throttle.log(
                log,
                "warn",
                ("uppercase", message.origin),
                "uppercase: payload is not a BARE string ({error}); dropped",
                error=short(str(e)),
                return_route=short(str(message.return_route)),
            )
            return
        self.reply(message, encode_string(text.upper()))


class Hop(Worker):
    """
    Removes itself from the onward route, adds itself to the return route,
    and forwards the message (which keeps its sender: a peer's message
    through C{hop} is still the peer's).
    """

    access = ANYONE

    def receive(self, message):
        onward = message.onward_route.step()
        if not onward:
            return
        self.node.forward(message, onward, message.return_route.prepend(self.address))


#: address -> worker class of the services every node starts.
DEFAULT_SERVICES = {"echo": Echo, "uppercase": Uppercase, "hop": Hop}


def start_default_services(node):
    """
    Start C{echo}, C{uppercase} and C{hop} on C{node}.
    """
    for name, cls in DEFAULT_SERVICES.items():
        node.start_worker(name, cls())
