"""
The seed's relay and portal, embedded in one Twisted program.

n2 is a reachable node; n3 (think: behind NAT) registers the relay
forward_to_n3 at n2 and has an outlet to a web server; n1 has an inlet whose
route goes through n2's relay to n3's outlet. An HTTP request to the inlet
reaches the web server.

Run: python examples/portal.py
"""

from twisted.internet import defer, endpoints, task
from twisted.web import resource, server, static

from ockamtw import Node, decode_string, encode_string


async def main(reactor):
    # The service we want to reach, on a port the OS picks.
    root = resource.Resource()
    root.putChild(b"", static.Data(b"hello from behind the relay\n", "text/plain"))
    site = server.Site(root)
    web = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    target = f"127.0.0.1:{web.getHost().port}"

    n1, n2, n3 = Node(reactor, name="n1"), Node(reactor, name="n2"), Node(reactor, name="n3")
    for node in (n1, n2, n3):
        node.startService()
    try:
        listener = await n2.tcp.listen("tcp:0:interface=127.0.0.1")
        at = f"/ip4/127.0.0.1/tcp/{listener.port}"

        relay = await n3.create_relay(at, name="n3")
        print(f"relay {relay.alias} is {relay.status}")

        reply = await n1.request(f"{at}/service/{relay.alias}/service/uppercase", encode_string("hello"))
        print(decode_string(reply.payload))

        await n3.create_outlet("outlet", target)
        inlet = await n1.create_inlet("127.0.0.1:0", f"{at}/service/{relay.alias}/service/outlet")
        print(f"inlet listening on {inlet.socket_address}")

        body = await http_get(reactor, f"http://{inlet.socket_address}/")
        print(body.decode().strip())
    finally:
        for node in (n1, n3, n2):
            await node.stopService()
        await web.stopListening()


async def http_get(reactor, url):
    import treq
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.get(url, pool=pool, reactor=reactor)
        return await response.content()
    finally:
        await pool.closeCachedConnections()


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
