"""
The public node: the core of L{ockamtw.node} with the default services.
"""

from .node import BaseNode
from .services import start_default_services


class Node(BaseNode):
    """
    An Ockam node with the default services C{echo}, C{uppercase} and
    C{hop}.  Embed it in any Twisted program::

        node = Node(reactor, name="n1")
        node.startService()                # or node.setServiceParent(app)
        listener = await node.tcp.listen("tcp:0:interface=127.0.0.1")
        conn = await node.tcp.connect("127.0.0.1:7000")
        reply = await node.request(Route([conn.address, Address.parse("uppercase")]),
                                   encode_string("hello"))
        await node.stopService()

    @param reactor: the reactor to use (the global one by default).
    @param name: the node's name (random by default).
    @param services: start the default services (default C{True}).
    """

    def __init__(self, reactor=None, name=None, services=True):
        BaseNode.__init__(self, reactor, name)
        if services:
            start_default_services(self)
