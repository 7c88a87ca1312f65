"""
The twistd face of the Orchestrator: C{twistd -n ockam-orchestrator --data
DIR}.  L{Options} and L{makeService} are what the C{ockam-orchestrator}
plugin names; L{run} runs it without plugin discovery (the
C{ockamtw-orchestrator} console script and C{ockam orchestrator start}).
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from ..control.state import ockam_home
from ..endpoints import server_description
from ..errors import WireError
from ..tap import FaceOptions, usage_exit
from .service import Orchestrator, Settings, StartError

log = Logger(namespace="ockamtw.orchestrator.tap")

DEFAULT_HTTP = "tcp:6252:interface=127.0.0.1"


def default_data(home=None) -> str:
    return os.path.join(home or ockam_home(), "orchestrator")


def _range(text: str):
    text = text.strip()
    if text in ("0", "any"):
        return None
    low, sep, high = text.partition("-")
    try:
        low_n, high_n = int(low), int(high if sep else low)
    except ValueError:
        raise usage.UsageError(f"--project-ports: expected A-B (ports), or 0 for any free ports, got {text!r}") from None
    if not (0 < low_n <= high_n <= 65535) or high_n - low_n < 1:
        raise usage.UsageError(f"--project-ports: expected A-B with 0 < A < B <= 65535, got {text!r}")
    return (low_n, high_n)


def _seconds(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise usage.UsageError(f"--{name}: not a number of seconds: {text!r}") from None
        if value <= 0:
            raise usage.UsageError(f"--{name}: must be positive")
        return value

    return parse


class Options(FaceOptions):
    """
    Options of C{twistd ockam-orchestrator}.
    """

    program = "twistd ockam-orchestrator"
    script = "ockamtw-orchestrator"
    plugin = "ockam-orchestrator"
    longdesc = (
        "Run a self-hosted Ockam Orchestrator: projects (a project node and an authority each), "
        "members, enrollment codes and relay owners, with an HTTP+JSON API for the `ockam` command."
    )
    optParameters = [
        ["data", None, None, "Directory for the database, the secrets key and the administrator's token "
                              "[default: $OCKAM_HOME/orchestrator]."],
        ["http", None, DEFAULT_HTTP, "Where the HTTP API listens: a port (on 127.0.0.1), HOST:PORT or an endpoint "
                                     "string (ssl:... for TLS)."],
        ["db", None, None, "A SQLite file [default: DATA/orchestrator.sqlite3] or a postgresql:// URL."],
        ["listen-host", None, "127.0.0.1", "The address project nodes and authorities listen on."],
        ["advertise-host", None, None, "The host their routes name in project.json [default: the listen host]."],
        ["project-ports", None, "4000-4099", "Ports for project nodes and authorities (two per project), A-B; "
                                             "0 for any free ports (kept once chosen)."],
        ["credential-ttl", None, 30 * 86400, "Seconds a member's credential is valid (30 days, as in Ockam 0.83).",
         _seconds("credential-ttl")],
        ["secrets-key-file", None, None, "The key that seals project keys at rest [default: DATA/secrets.key, "
                                         "made at first start]."],
        ["refresh", None, 2.0, "Seconds between reloads of members (revocations).", _seconds("refresh")],
        ["lease-ttl", None, 15.0, "Seconds a project's lease lasts: after a crash, another instance serves the "
                                  "project within this plus one tick.", _seconds("lease-ttl")],
        ["tick", None, 2.0, "Seconds between lease renewals and claims of projects no instance serves "
                            "(under half the lease time).", _seconds("tick")],
    ]

    def opt_http(self, value: str) -> None:
        try:
            self["http"] = server_description(value)
        except WireError as e:
            raise usage.UsageError(f"--http: {e}") from None

    def postOptions(self) -> None:
        self["project-ports"] = _range(str(self["project-ports"]))
        if self["data"] is None:
            self["data"] = default_data()
        self["data"] = os.path.abspath(self["data"])
        if self["db"] is not None and not self["db"].startswith(("postgresql://", "postgres://")):
            if "://" in self["db"]:
                raise usage.UsageError(f"--db: a SQLite file or a postgresql:// URL, not {self['db']!r}")
            self["db"] = os.path.abspath(self["db"])
        if self["tick"] * 2 >= self["lease-ttl"]:
            raise usage.UsageError(
                f"--tick ({self['tick']:g}) must be under half of --lease-ttl ({self['lease-ttl']:g})"
            )


class _Fatal(Service):
    """
    Ends the process with one line when the orchestrator cannot start
    (after the reactor runs: the database and key file are opened then).
    """

    def __init__(self, orchestrator: Orchestrator, reactor) -> None:
        self.orchestrator = orchestrator
        self.reactor = reactor

    def startService(self) -> None:
        Service.startService(self)

        def failed(f):
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"ockam-orchestrator: {f.getErrorMessage()}\n")
            stream.flush()
            self.reactor.stop()

        self.orchestrator.ready.addErrback(failed)


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings = Settings(
        options["data"],
        db=options["db"],
        http=options["http"],
        listen_host=options["listen-host"],
        advertise_host=options["advertise-host"],
        project_ports=options["project-ports"],
        credential_ttl=options["credential-ttl"],
        secrets_key_file=options["secrets-key-file"],
        refresh=options["refresh"],
        lease=options["lease-ttl"],
        tick=options["tick"],
    )
    os.makedirs(settings.data, mode=0o700, exist_ok=True)
    orchestrator = Orchestrator(reactor, settings)
    _Fatal(orchestrator, reactor).setServiceParent(orchestrator)
    return orchestrator


def run(argv=None) -> None:
    """
    Run C{twistd -n ockam-orchestrator ARGS} programmatically.
    """
    from twisted.application.service import ServiceMaker
    from twisted.scripts import twistd

    maker = ServiceMaker("ockamtw-orchestrator", "ockamtw.orchestrator.tap", "A self-hosted Ockam Orchestrator",
                         "ockam-orchestrator")

    def options() -> Options:
        o = Options()
        o.program = Options.script
        return o

    class _Config(twistd.ServerOptions):
        @property
        def subCommands(self):
            self.loadedPlugins = {"ockam-orchestrator": maker}
            return [("ockam-orchestrator", None, options, maker.description)]

    args = list(sys.argv[1:] if argv is None else argv)
    if "ockam-orchestrator" not in args:
        args = ["-n", "--pidfile=", "ockam-orchestrator"] + args
    config = _Config()
    try:
        config.parseOptions(args)
    except usage.error as e:  # twistd's own options (ours end in FaceOptions)
        usage_exit(Options.script, e)
    try:
        twistd.runApp(config)
    except StartError as e:
        print(f"ockam-orchestrator: {e}", file=sys.stderr)
        raise SystemExit(1)
