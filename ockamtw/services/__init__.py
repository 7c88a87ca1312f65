"""
The default services of a node: C{echo}, C{uppercase} and C{hop}.
"""

from twisted.logger import Logger

from ..errors import WireError
from ..node import Worker
from ..wire import decode_string, encode_string

log = Logger(namespace="ockamtw.services")


class Echo(Worker):
    """
    Sends the raw payload back to the return route, unchanged.
    """

    def receive(self, message):
        self.reply(message, message.payload)


class Uppercase(Worker):
    """
    Reads the payload as a BARE string and answers it upper-cased.
    """

    def receive(self, message):
        try:
            text = decode_string(message.payload)
        except WireError as e:
            log.warn(
                "uppercase: payload is not a BARE string ({error}); dropped",
                error=str(e),
                return_route=str(message.return_route),
            )
            return
        self.reply(message, encode_string(text.upper()))


class Hop(Worker):
    """
    Removes itself from the onward route, adds itself to the return route,
    and forwards the message.
    """

    def receive(self, message):
        onward = message.onward_route.step()
        if not onward:
            log.info("hop: nothing after hop in the onward route; dropped")
            return
        self.node.send(onward, message.payload, return_route=message.return_route.prepend(self.address))


#: address -> worker class of the services every node starts.
DEFAULT_SERVICES = {"echo": Echo, "uppercase": Uppercase, "hop": Hop}


def start_default_services(node):
    """
    Start C{echo}, C{uppercase} and C{hop} on C{node}.
    """
    for name, cls in DEFAULT_SERVICES.items():
        node.start_worker(name, cls())
