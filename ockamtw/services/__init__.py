"""
The default services of a node: C{echo}, C{uppercase} and C{hop}; and
L{StartedServices}, the feature that starts more of them at other
addresses (C{ockam service start}) and keeps them in the node's state.

Anyone may send to them.  Their answers are messages of this node; what
C{hop} passes on keeps its sender (L{ockamtw.node.BaseNode.forward}), so a
peer cannot use it to make this node connect anywhere or speak for it.
"""

from typing import Dict

from twisted.logger import Logger

from ..access import ANYONE
from ..errors import OckamError, WireError
from ..feature import ControlError, Feature, service_name
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


class StartedServices(Feature):
    """
    Services started at addresses of the user's choice (C{ockam service
    start}): C{state.json}'s C{services}, the control API's C{/services}
    (which lists the default ones too, as Ockam 0.83 does).
    """

    name = "services"
    state_keys = ("services",)
    routes = {
        ("GET", "services", False): "list_route",
        ("POST", "services", False): "start_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        #: address -> type of the services started through the API
        self.started: Dict[str, str] = {}
        #: whether the node's state had C{services} when restored
        self._keeps = False

    def start(self, kind, address) -> dict:
        """
        Start a service of type C{kind} (C{echo}, C{uppercase}, C{hop}) at
        C{address}.

        @raise ControlError: 400 for an unknown type or no address, 409 for
            an address that is taken.
        """
        if kind not in DEFAULT_SERVICES:
            raise ControlError(400, f"unknown service {kind!r} (services: {', '.join(sorted(DEFAULT_SERVICES))})")
        if not isinstance(address, str) or not address:
            raise ControlError(400, "missing 'address'")
        address = service_name(address)
        if self.node.worker_at(address) is not None:
            raise ControlError(409, f"address {address!r} is already taken on node {self.node.name}")
        self.node.start_worker(address, DEFAULT_SERVICES[kind]())
        self.started[address] = kind
        return {"address": address, "type": kind}

    def save(self) -> dict:
        if not (self.started or self._keeps):
            return {}
        return {"services": [{"type": t, "address": a} for a, t in self.started.items()]}

    def restore(self, state: dict) -> None:
        if "services" in state:
            self._keeps = True
        for svc in state.get("services") or []:
            if svc.get("address") in self.started:
                continue
            try:
                self.start(svc.get("type"), svc.get("address"))
            except (ControlError, OckamError, TypeError, AttributeError) as e:
                log.error("service {s} not restored: {e}", s=svc, e=str(e))

    def list_route(self, call) -> list:
        """
        The node's services as Ockam 0.83 lists them: C{{"address",
        "type"}}, the default ones first.
        """
        out = []
        for name in ("uppercase", "echo", "hop"):
            if isinstance(self.node.worker_at(name), DEFAULT_SERVICES[name]) and name not in self.started:
                out.append({"address": name, "type": name})
        if self.node.worker_at("credentials") is not None:
            out.append({"address": "credentials", "type": "credentials"})
        out += [{"address": a, "type": t} for a, t in self.started.items()]
        return out

    async def start_route(self, call) -> dict:
        info = self.start(call.body.get("type"), call.body.get("address"))

        def undo():
            self.started.pop(info["address"], None)
            self.node.stop_worker(info["address"])

        await call.saved(undo=undo)
        return info
