"""
Hypothesis strategies and settings shared by the property tests: wire
values (L{addresses}, L{routes}, L{payloads}, L{messages},
L{portal_messages}; L{tests.test_wire}, L{tests.test_portal_codec}) and the
settings of the project API's property tests (L{PROJECT_PROPERTY};
L{tests.test_project_codec}, L{tests.test_project_credentials},
L{tests.test_project_info}).
"""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ockamtw.routing import Address, Route
from ockamtw.wire import PortalMessage, TransportMessage

addresses = st.builds(Address, st.integers(0, 255), st.binary(max_size=40))
routes = st.lists(addresses, max_size=5).map(Route)
payloads = st.one_of(st.binary(max_size=64), st.binary(min_size=120, max_size=400))
messages = st.builds(TransportMessage, routes, routes, payloads)
portal_messages = st.one_of(
    st.sampled_from([PortalMessage.PING, PortalMessage.PONG, PortalMessage.DISCONNECT]).map(
        PortalMessage
    ),
    st.binary(max_size=300).map(PortalMessage.payload),
)

#: The project API modules' settings: modest, so that each runs in seconds.
PROJECT_PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
