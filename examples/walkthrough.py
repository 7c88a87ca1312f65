"""
The seed's routing walkthrough on loopback, in one process: three nodes, n1
and n3 connected to n2, and a message from n1 to n3's uppercase service
through n2 (bridging two TCP connections).

Run: python examples/walkthrough.py
"""

from twisted.internet import defer, task

from ockamtw import Address, Node, Route, decode_string, encode_string


async def main(reactor):
    n2 = Node(reactor, name="n2")
    n3 = Node(reactor, name="n3")
    n1 = Node(reactor, name="n1")
    for n in (n2, n3, n1):
        n.startService()
    try:
        listener = await n2.tcp.listen("tcp:0:interface=127.0.0.1")
        print(f"n2 listening on {listener.socket_address}")
        n3_conn = await n3.tcp.connect(listener.socket_address)
        n1_conn = await n1.tcp.connect(listener.socket_address)
        print(f"n1 -> n2 connection worker {n1_conn.address}")
        # n2's side of n3's connection: the accepted connection n2 sees from n3.
        n2_to_n3 = next(c for c in n2.tcp.connections if c.socket_address == n3_conn.local_address)
        route = Route([n1_conn.address, n2_to_n3.address, Address.parse("uppercase")])
        print(f"sending 'hello' along {route}")
        reply = await n1.request(route, encode_string("hello"), timeout=5)
        print(decode_string(reply.payload))
    finally:
        for n in (n1, n3, n2):
            await n.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
