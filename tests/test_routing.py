"""
Tests for L{ockamtw.routing}: Address and Route text and behaviour,
MultiAddr parsing, grouping and resolution to routes, and parse_route_text.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.routing import (
    LOCAL,
    PROTOCOLS,
    TCP,
    Address,
    Component,
    Hop,
    MultiAddr,
    Route,
    parse_route_text,
)

from .helpers import assert_wire_error

PROPERTY = settings(max_examples=60, deadline=None, database=None)


A = Address(LOCAL, "a")
B = Address(LOCAL, "b")
C = Address(TCP, "127.0.0.1:4000")


class AddressTests(SynchronousTestCase):
    def test_parseWithoutTypeIsLocal(self):
        a = Address.parse("echo")
        self.assertEqual((a.type, a.value), (0, "echo"))
        self.assertEqual(str(a), "0#echo")
        self.assertEqual(a, Address.parse("0#echo"))
        self.assertEqual(a, Address.local("echo"))

    def test_parseTcp(self):
        a = Address.parse("1#127.0.0.1:4000")
        self.assertEqual((a.type, a.value), (1, "127.0.0.1:4000"))
        self.assertEqual(str(a), "1#127.0.0.1:4000")
        self.assertEqual(a, Address.tcp("127.0.0.1", 4000))

    def test_parseOtherTypes(self):
        self.assertEqual(Address.parse("255#x").type, 255)
        self.assertEqual(Address.parse("4#ble").type, 4)
        # only the first '#' separates the type
        a = Address.parse("0#a#b")
        self.assertEqual((a.type, a.value), (0, "a#b"))
        # a head that is not a number is part of a local value
        a = Address.parse("abc#def")
        self.assertEqual((a.type, a.value), (0, "abc#def"))
        # surrounding blanks are ignored
        self.assertEqual(Address.parse("  0#echo \n"), Address(0, "echo"))

    def test_parseRejects(self):
        for text in ("#x", "", "   ", "300#x", "256#x", "0#", "1#"):
            assert_wire_error(self, Address.parse, text, context=f"Address.parse({text!r})")
        assert_wire_error(self, Address.parse, 5, context="Address.parse(5)")
        assert_wire_error(self, Address.parse, b"0#echo", context="Address.parse(bytes)")

    def test_parseNonAsciiDigitType(self):
        """
        A type must be ASCII digits: text whose part before '#' is not
        (here a superscript two) is a local address named by the whole text,
        like "foo#bar", and never a bare ValueError from int().
        """
        a = Address.parse("\u00b2#x")
        self.assertEqual((a.type, a.value), (0, "\u00b2#x"))
        self.assertEqual(Address.parse("foo#bar"), Address(0, "foo#bar"))

    def test_parseAcceptsAddress(self):
        self.assertIs(Address.parse(A), A)

    def test_constructorRejects(self):
        for t in (-1, 256, "0", None, 1.0):
            assert_wire_error(self, Address, t, "x", context=f"Address({t!r}, 'x')")
        assert_wire_error(self, Address, 0, 5, context="Address(0, 5)")

    def test_loneSurrogate(self):
        """
        A value holding a lone surrogate that is not a surrogateescape byte
        (as json.loads gives for "\\ud800") cannot be encoded: WireError, at
        construction or at encode(), never UnicodeEncodeError (which it
        once raised: 'surrogates not allowed').
        """

        def build_and_encode():
            return Address(0, "\ud800").encode()

        assert_wire_error(self, build_and_encode, context="Address(0, '\\ud800').encode()")

    def test_tcp(self):
        self.assertEqual(str(Address.tcp("::1", 4000)), "1#[::1]:4000")
        self.assertEqual(str(Address.tcp("[::1]", 4000)), "1#[::1]:4000")
        self.assertEqual(str(Address.tcp("localhost", 4000)), "1#localhost:4000")

    def test_randomLocal(self):
        a, b = Address.random_local(), Address.random_local()
        self.assertEqual(a.type, LOCAL)
        self.assertEqual(len(a.value), 32)
        self.assertEqual(a.value, a.value.lower())
        bytes.fromhex(a.value)
        self.assertNotEqual(a, b)

    def test_equalityAndHash(self):
        self.assertEqual(Address(0, "x"), Address.parse("x"))
        self.assertEqual(hash(Address(0, "x")), hash(Address.parse("0#x")))
        self.assertNotEqual(Address(0, "x"), Address(1, "x"))
        self.assertNotEqual(Address(0, "x"), Address(0, "y"))
        self.assertNotEqual(Address(0, "x"), "0#x")
        self.assertEqual(len({Address(0, "x"), Address.parse("0#x"), Address(1, "x")}), 2)

    def test_immutable(self):
        a = Address(0, "x")
        self.assertRaises(AttributeError, setattr, a, "value", "y")
        self.assertEqual(a.value, "x")

    def test_repr(self):
        self.assertEqual(repr(Address(1, "h:1")), "Address('1#h:1')")

    @PROPERTY
    @given(
        st.integers(0, 255),
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
            min_size=1,
            max_size=30,
        ),
    )
    def test_textRoundTrip(self, t, value):
        a = Address(t, value)
        self.assertEqual(Address.parse(str(a)), a)
        self.assertEqual(str(Address.parse(str(a))), f"{t}#{value}")


class RouteTests(SynchronousTestCase):
    def test_sequence(self):
        r = Route([A, "0#b", C])
        self.assertEqual(len(r), 3)
        self.assertEqual(list(r), [A, B, C])
        self.assertEqual(r[0], A)
        self.assertEqual(r[-1], C)
        self.assertIsInstance(r[0], Address)
        for piece, expected in ((r[1:], [B, C]), (r[:1], [A]), (r[::-1], [C, B, A]), (r[5:], [])):
            self.assertIsInstance(piece, Route)
            self.assertEqual(list(piece), expected)
        self.assertIn(B, r)
        self.assertEqual(Route(), Route([]))
        self.assertEqual(len(Route()), 0)
        self.assertFalse(Route())
        self.assertIs(Route(r), r)

    def test_add(self):
        r = Route([A]) + Route([B])
        self.assertIsInstance(r, Route)
        self.assertEqual(list(r), [A, B])
        r = Route([A]) + ["0#b", C]
        self.assertIsInstance(r, Route)
        self.assertEqual(list(r), [A, B, C])
        r = [C] + Route([A])
        self.assertIsInstance(r, Route)
        self.assertEqual(list(r), [C, A])
        r = (B,) + Route([A])
        self.assertIsInstance(r, Route)
        self.assertEqual(list(r), [B, A])

    def test_prependAppendStep(self):
        r = Route([B])
        p = r.prepend(A)
        self.assertIsInstance(p, Route)
        self.assertEqual(list(p), [A, B])
        self.assertEqual(list(r), [B])  # unchanged
        self.assertEqual(list(r.prepend("1#127.0.0.1:4000")), [C, B])
        q = r.append("a")
        self.assertIsInstance(q, Route)
        self.assertEqual(list(q), [B, A])
        s = Route([A, B, C]).step()
        self.assertIsInstance(s, Route)
        self.assertEqual(list(s), [B, C])
        self.assertEqual(list(Route([A]).step()), [])
        self.assertEqual(list(Route().step()), [])
        assert_wire_error(self, r.prepend, 5, context="prepend(5)")
        assert_wire_error(self, r.append, "", context="append('')")

    def test_equalityAndHash(self):
        r1 = Route.parse("0#a => 0#b")
        r2 = Route([A, B])
        r3 = Route(["a", "b"])
        self.assertEqual(r1, r2)
        self.assertEqual(r2, r3)
        self.assertEqual(hash(r1), hash(r2))
        self.assertNotEqual(r1, Route([B, A]))
        self.assertNotEqual(r1, Route([A]))
        self.assertEqual(len({r1, r2, r3, Route([B, A])}), 2)
        self.assertEqual({r1: 1}[r3], 1)

    def test_text(self):
        r = Route.parse("1#127.0.0.1:4000 => 0#printer")
        self.assertEqual(list(r), [C, Address(0, "printer")])
        self.assertEqual(str(r), "1#127.0.0.1:4000 => 0#printer")
        self.assertEqual(Route.parse(str(r)), r)
        self.assertEqual(Route.parse("a=>b"), Route([A, B]))
        self.assertEqual(Route.parse("  a   =>   b "), Route([A, B]))
        self.assertEqual(Route.parse(""), Route())
        self.assertEqual(Route.parse("   "), Route())
        self.assertEqual(str(Route()), "")
        self.assertIs(Route.parse(r), r)
        self.assertEqual(repr(Route([A, B])), "Route('0#a => 0#b')")

    def test_textRejects(self):
        for text in ("a => ", " => b", "a =>  => b", "=>", "#x => a", "300#x"):
            assert_wire_error(self, Route.parse, text, context=f"Route.parse({text!r})")
        assert_wire_error(self, Route.parse, ["a"], context="Route.parse(list)")
        assert_wire_error(self, Route, [5], context="Route([5])")

    def test_encode(self):
        self.assertEqual(Route().encode(), b"\x00")
        self.assertEqual(Route(["echo"]).encode(), bytes.fromhex("0100046563686f"))

    @PROPERTY
    @given(
        st.lists(
            st.builds(
                Address,
                st.integers(0, 255),
                st.text(
                    alphabet=st.characters(
                        whitelist_categories=("Lu", "Ll", "Nd", "Pc", "Pd"),
                    ),
                    min_size=1,
                    max_size=20,
                ),
            ),
            max_size=6,
        )
    )
    def test_textRoundTrip(self, addrs):
        r = Route(addrs)
        self.assertEqual(Route.parse(str(r)), r)
        self.assertEqual(str(r), " => ".join(f"{a.type}#{a.value}" for a in addrs))


class MultiAddrTests(SynchronousTestCase):
    ALL_PROTOCOLS = (
        "/ip4/127.0.0.1/tcp/7000",
        "/ip6/::1/tcp/4000",
        "/ip6/fe80::1/tcp/1",
        "/dnsaddr/localhost/tcp/4000",
        "/service/echo",
        "/worker/0123456789abcdef0123456789abcdef",
        "/node/n1",
        "/project/default",
        "/secure/api",
        "/ip4/10.0.0.1/tcp/65535/secure/api/service/uppercase",
        "/node/n1/service/forward_to_n3/service/outlet",
    )

    def test_allProtocolsPrintBack(self):
        seen = set()
        for text in self.ALL_PROTOCOLS:
            ma = MultiAddr.parse(text)
            self.assertEqual(str(ma), text, text)
            self.assertEqual(MultiAddr.parse(str(ma)), ma, text)
            self.assertEqual(len(ma), text.count("/") // 2, text)
            seen.update(c.protocol for c in ma)
        self.assertEqual(seen, set(PROTOCOLS))

    def test_components(self):
        ma = MultiAddr.parse("/ip4/127.0.0.1/tcp/7000/service/echo")
        self.assertEqual(
            list(ma),
            [Component("ip4", "127.0.0.1"), Component("tcp", "7000"), Component("service", "echo")],
        )
        self.assertEqual(str(Component("node", "n1")), "/node/n1")
        self.assertEqual(MultiAddr(list(ma)), ma)
        self.assertEqual(repr(ma), "MultiAddr('/ip4/127.0.0.1/tcp/7000/service/echo')")
        # surrounding blanks are ignored
        self.assertEqual(str(MultiAddr.parse("  /service/echo\n")), "/service/echo")

    def test_hops(self):
        cases = {
            "/ip4/127.0.0.1/tcp/7000/service/forward_to_n3/service/uppercase": (
                Hop("tcp", host="127.0.0.1", port=7000),
                Hop("local", name="forward_to_n3"),
                Hop("local", name="uppercase"),
            ),
            "/dnsaddr/localhost/tcp/4000/worker/abc": (
                Hop("tcp", host="localhost", port=4000),
                Hop("local", name="abc"),
            ),
            "/ip6/::1/tcp/4000/secure/api": (
                Hop("tcp", host="::1", port=4000),
                Hop("secure", name="api"),
            ),
            "/node/n1/service/echo": (Hop("node", name="n1"), Hop("local", name="echo")),
            "/project/default/service/forward_to_n3/service/outlet": (
                Hop("project", name="default"),
                Hop("local", name="forward_to_n3"),
                Hop("local", name="outlet"),
            ),
            "/ip4/1.2.3.4/tcp/1/ip4/5.6.7.8/tcp/2": (
                Hop("tcp", host="1.2.3.4", port=1),
                Hop("tcp", host="5.6.7.8", port=2),
            ),
        }
        for text, hops in cases.items():
            self.assertEqual(MultiAddr.parse(text).hops, hops, text)
        self.assertEqual(str(Hop("tcp", host="h", port=1)), "h:1")
        self.assertEqual(str(Hop("node", name="n1")), "node:n1")

    def test_isLocalOnly(self):
        self.assertTrue(MultiAddr.parse("/service/echo/worker/x").is_local_only())
        self.assertFalse(MultiAddr.parse("/node/n1/service/echo").is_local_only())
        self.assertFalse(MultiAddr.parse("/ip4/127.0.0.1/tcp/1/service/echo").is_local_only())

    def test_rejects(self):
        for text in (
            "/bogus/x",  # unknown protocol
            "/udp/7000",  # unknown protocol
            "/service",  # missing value
            "/service/",  # empty value
            "/service/echo/",  # trailing slash: protocol without value
            "/service//node/n1",
            "/tcp/7000",  # tcp alone
            "/service/echo/tcp/7000",
            "/ip4/1.2.3/tcp/1",  # bad IPv4
            "/ip4/256.0.0.1/tcp/1",
            "/ip6/not::an::ip/tcp/1",
            "/ip6/[::1]/tcp/1",
            "/ip4/127.0.0.1",  # host without tcp
            "/ip4/127.0.0.1/service/echo",
            "/dnsaddr/localhost",
            "/ip4/127.0.0.1/tcp/65536",  # port too large
            "/ip4/127.0.0.1/tcp/-1",
            "/ip4/127.0.0.1/tcp/http",
            "/ip4/127.0.0.1/tcp/07000",
            "service/echo",  # not starting with '/'
            "",
            "echo",
        ):
            assert_wire_error(self, MultiAddr.parse, text, context=f"MultiAddr.parse({text!r})")
        assert_wire_error(self, MultiAddr.parse, 7000, context="MultiAddr.parse(7000)")

    def test_portBounds(self):
        self.assertEqual(MultiAddr.parse("/ip4/127.0.0.1/tcp/65535").hops[0].port, 65535)
        self.assertEqual(MultiAddr.parse("/ip4/127.0.0.1/tcp/1").hops[0].port, 1)

    def test_nonAsciiDigitPort(self):
        """
        A port written with a Unicode digit that int() refuses is bad input:
        WireError, not a bare ValueError (str.isdigit() accepts it, and
        int() then raised "invalid literal for int() with base 10").
        """
        assert_wire_error(
            self,
            MultiAddr.parse,
            "/ip4/1.2.3.4/tcp/\u00b2",
            context="MultiAddr.parse('/ip4/1.2.3.4/tcp/\\u00b2')",
        )

    def test_toRoute(self):
        cases = {
            "/service/echo": "0#echo",
            "/worker/abc/service/echo": "0#abc => 0#echo",
            "/ip4/127.0.0.1/tcp/7000/service/echo": "1#127.0.0.1:7000 => 0#echo",
            "/ip6/::1/tcp/4000/service/echo": "1#[::1]:4000 => 0#echo",
            "/dnsaddr/localhost/tcp/4000/service/forward_to_n3/service/uppercase": (
                "1#localhost:4000 => 0#forward_to_n3 => 0#uppercase"
            ),
        }
        for text, route in cases.items():
            r = MultiAddr.parse(text).to_route()
            self.assertIsInstance(r, Route, text)
            self.assertEqual(r, Route.parse(route), text)
            self.assertEqual(str(r), route, text)
        self.assertEqual(
            list(MultiAddr.parse("/ip4/127.0.0.1/tcp/7000").to_route()),
            [Address(TCP, "127.0.0.1:7000")],
        )

    def test_toRouteNeedsNode(self):
        for text in ("/node/n1", "/node/n1/service/echo", "/project/default/service/echo", "/service/a/secure/api"):
            assert_wire_error(self, MultiAddr.parse(text).to_route, context=f"to_route of {text}")

    def test_addEqualityHash(self):
        a = MultiAddr.parse("/ip4/127.0.0.1/tcp/7000")
        b = MultiAddr.parse("/service/echo")
        joined = a + b
        self.assertIsInstance(joined, MultiAddr)
        self.assertEqual(str(joined), "/ip4/127.0.0.1/tcp/7000/service/echo")
        self.assertEqual(str(a + "/service/echo"), "/ip4/127.0.0.1/tcp/7000/service/echo")
        self.assertEqual(joined, MultiAddr.parse("/ip4/127.0.0.1/tcp/7000/service/echo"))
        self.assertEqual(hash(joined), hash(MultiAddr.parse(str(joined))))
        self.assertNotEqual(a, b)
        self.assertNotEqual(b, "/service/echo")
        self.assertEqual(len({a, b, MultiAddr.parse("/service/echo")}), 2)
        self.assertIs(MultiAddr.parse(a), a)


class ParseRouteTextTests(SynchronousTestCase):
    def test_multiAddr(self):
        r = parse_route_text("/ip4/127.0.0.1/tcp/7000/service/echo")
        self.assertIsInstance(r, MultiAddr)
        self.assertEqual(str(r), "/ip4/127.0.0.1/tcp/7000/service/echo")
        self.assertIsInstance(parse_route_text("  /service/echo"), MultiAddr)

    def test_route(self):
        r = parse_route_text("1#127.0.0.1:4000 => 0#printer")
        self.assertIsInstance(r, Route)
        self.assertEqual(list(r), [C, Address(0, "printer")])
        r = parse_route_text("echo")
        self.assertEqual(r, Route([Address(0, "echo")]))
        self.assertEqual(parse_route_text(""), Route())

    def test_passThrough(self):
        r = Route([A])
        m = MultiAddr.parse("/service/echo")
        self.assertIs(parse_route_text(r), r)
        self.assertIs(parse_route_text(m), m)

    def test_rejects(self):
        for bad in ("/bogus/x", "/tcp/7000", "a => ", "#x", 5, None, b"/service/echo"):
            assert_wire_error(self, parse_route_text, bad, context=f"parse_route_text({bad!r})")
