"""
The zope Interfaces of ockamtw's public surfaces.
"""

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IWorker(Interface):
    """
    Something that receives routed messages at an address of a node.

    The node calls L{started} once when the worker is registered, L{receive}
    for each message whose onward route starts with the worker's address,
    and L{stopped} once when it is removed (or the node stops).
    """

    def started(node, address):
        """
        The worker now lives at C{address} (an L{ockamtw.Address}) on
        C{node}.
        """

    def receive(message):
        """
        Handle one L{ockamtw.TransportMessage}.  Its onward route still
        starts with this worker's address.  Exceptions are logged by the
        node and the message is dropped.
        """

    def stopped():
        """
        The worker has been removed from the node.
        """


class IFlowSource(Interface):
    """
    Whatever brings messages in from outside a node (a TCP connection, a
    portal's client socket).  A congested outbound connection pauses the
    source of the messages it is asked to write, and resumes it when it
    drains.  Pauses nest: a source reads again only after as many
    L{resume_flow} calls as L{pause_flow} calls.
    """

    def pause_flow():
        """
        Stop reading until resumed.
        """

    def resume_flow():
        """
        Undo one L{pause_flow}.
        """


class ITcpConnection(Interface):
    """
    A TCP connection of a node's TCP transport (it is also an
    L{IConnection}).
    """

    address = Attribute("The connection worker's L{ockamtw.Address} (C{0#<32 hex>}).")
    transport_id = Attribute("An identifier of 32 hex characters.")
    mode = Attribute('"Remote connection" (we connected) or "Accepted" (a peer connected).')
    socket_address = Attribute('The peer as "host:port".')

    def close():
        """
        Close the connection; returns a Deferred that fires once it is
        closed.  Idempotent.
        """


class ITcpListener(Interface):
    """
    A TCP listener of a node's TCP transport.
    """

    address = Attribute("An L{ockamtw.Address} naming the listener.")
    transport_id = Attribute("An identifier of 32 hex characters.")
    mode = Attribute('Always "Listening".')
    socket_address = Attribute('The bound address as "host:port".')
    host = Attribute("The bound host.")
    port = Attribute("The bound port number.")

    def close():
        """
        Stop listening (accepted connections stay up); returns a Deferred.
        """


class IAccessPolicy(Interface):
    """
    Who may send to a worker (see L{ockamtw.access}).  The node asks the
    worker's policy before delivering each message to it; a refused message
    is dropped and counted.
    """

    def allows(message):
        """
        Whether the worker may receive C{message} (an
        L{ockamtw.TransportMessage}), judged by its C{origin}.
        """

    # A policy may also have refused(message), which the node calls after
    # refusing a message: a feature's chance to tell the sender why (an
    # outlet answers a refused Ping).


class IOrigin(Interface):
    """
    Where a message came into the node from: a transport connection or a
    secure channel end.  Things a remote peer creates are owned by the
    origin they were created through and end when it closes.
    """

    identity = Attribute(
        "The authenticated identifier (C{P<hex>}) of the peer, or C{None} when "
        "the peer proved nothing (a plain transport connection)."
    )
    connected = Attribute("Whether the origin is still open.")

    def on_close(f):
        """
        Call C{f(origin)} once the origin closes; returns a key for
        L{cancel_on_close}.
        """

    def cancel_on_close(key):
        """
        Withdraw a callback registered with L{on_close}.
        """


class ILink(IOrigin):
    """
    What a route leaves the node through, and what its answers come back
    through: a transport connection (L{IConnection}) or a secure channel end.
    A feature that sends along a route finds its link with
    L{ockamtw.node.BaseNode.link_of} (the link of the route's first
    address) and watches it: when the link closes, the route is gone.  In
    every module, C{_link} names this.
    """


class ILinkWorker(IWorker):
    """
    A worker that stands for a link: routes starting with its address leave
    the node through L{leads_to} (a connection's worker, a secure channel's
    encryptor).
    """

    leads_to = Attribute("The L{ILink} a route through this worker leaves the node through, or C{None}.")


class IBodyLink(ILink):
    """
    A link that takes an encoded message directly, for the portal's fast
    path: a header prepared once per route (L{head_for}), then each
    message's bytes (L{write_body}), with no decoding, routing or access
    check in between (the sender is this node's own worker).  A TCP
    connection writes it as a frame; a secure channel end encrypts it and
    sends it to its peer.
    """

    def head_for(onward, return_route):
        """
        The start of every message body written with L{write_body} whose
        onward route, after this link's own address, is C{onward}, and
        whose return route is C{return_route}: the version and both routes
        as this link will send them.  C{None} when the link cannot take
        bodies now (a secure channel not up yet).
        """

    def body_limit():
        """
        The most bytes that the body of one L{write_body} (C{head + data})
        may hold, all the links below this one included; C{None} when it is
        not known now (it then depends on a route this link does not
        hold).
        """

    def write_body(head, data, source=None, credit=False):
        """
        Send one message whose encoded body is C{head + data} (C{head}
        from L{head_for}, followed by the payload's length; C{data} bytes or
        a C{memoryview}, which the link may keep only as long as it
        writes).  C{source} (an
        L{IFlowSource}) is paused while the way out is congested (unless
        C{credit}: a stream under its own flow control).
        """


class IConnection(IBodyLink):
    """
    A link that is a transport connection (TCP): it can be written to
    directly (the portal and relay fast paths), tells how much came in on
    it, and can be dropped.
    """

    address = Attribute("Its worker's L{ockamtw.Address}: routes through the connection start with it.")
    messages_in = Attribute("Messages that came in through it so far (a measure of its liveness).")
    loop = Attribute("The other end when the node is connected to itself, else C{None}.")
    backpressure = Attribute(
        "Its L{ockamtw.flow.BackPressure}: C{backpressure.congested} says whether its outbound buffer is full."
    )

    def abort():
        """
        Drop the connection without flushing; a Deferred that fires once it
        is closed.
        """


class ITransport(Interface):
    """
    A transport of a node (TCP, ...), registered with
    L{ockamtw.node.BaseNode.register_transport} for the addresses of its
    type (C{1#host:port} for TCP).  Its connections are workers (links)
    that strip themselves from a message's onward route and send the rest.
    """

    address_type = Attribute("The address type it serves (1 for TCP).")

    def connect_hop(value):
        """
        A Deferred of the link (a worker with an C{address}) to C{value}, the
        value of an address of this type named in a route (C{"host:port"}):
        an open one, or a new one.  Fails with an L{ockamtw.OckamError}.
        """

    def close_all():
        """
        Close every listener and connection; a Deferred that fires when
        they are closed.
        """


class IFeature(IService):
    """
    A part of a node that plugs in (see L{ockamtw.feature}): a child service
    of the node, registered with L{ockamtw.node.BaseNode.add_feature},
    owning its objects, its part of the node's state and its control
    routes.  Its C{stopService} closes what it made and returns a Deferred
    that fires once it is closed.
    """

    node = Attribute("The node it belongs to.")
    state_keys = Attribute("The keys of the node's C{state.json} it keeps (a tuple).")
    routes = Attribute(
        "Its control routes: (HTTP method, collection, whether a key follows) -> the name of its method "
        "answering an L{ockamtw.feature.Call}."
    )

    def save():
        """
        A dict of its keys of C{state.json} and their values (a key left
        out is left as it is).
        """

    def restore(state):
        """
        Make again what C{state} (a checked C{state.json}) says it had;
        what is there already is left as it is, so doing it twice changes
        nothing.  What cannot be restored is logged.
        """

    def route_handlers():
        """
        Its routes with the callables answering them.
        """
