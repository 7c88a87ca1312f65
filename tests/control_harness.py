"""
A node's control API served in this process for tests: a L{NodeController}
on a UNIX socket, called with the command line's own L{ControlClient}.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor

from ockamtw.cli.client import ControlClient
from ockamtw.cli.nodes import CLIError
from ockamtw.control import state as st
from ockamtw.control.server import ControlService, NodeController

from .portal_harness import PortalTestCase


class ControlAPITestCase(PortalTestCase):
    timeout = 30

    async def serve(self, name: str = "n1"):
        """
        A node listening on loopback, its controller (with a state
        directory) served on a UNIX socket, and a client of it.
        """
        node, listener = await self.listening_node(name)
        directory = tempfile.mkdtemp(prefix="ockctl", dir="/tmp")  # short: a socket path
        self.addCleanup(shutil.rmtree, directory, True)
        st.write_state(directory, st.empty_state(name, listener.socket_address))
        controller = NodeController(node, directory)
        controller.listener = listener
        service = ControlService(reactor, controller, os.path.join(directory, st.SOCKET))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        client = ControlClient(reactor, name, os.path.join(directory, st.SOCKET))
        self.addCleanup(client.close)
        return node, listener, controller, client

    async def refused(self, client, method, path, body=None) -> str:
        try:
            await client.call(method, path, body)
        except CLIError as e:
            return str(e)
        self.fail(f"{method} {path} was not refused")
