"""
The twistd face: C{twistd -n ockam --name n2 --listen 7000}.

L{Options} and L{makeService} are what the C{ockam} twistd plugin names;
L{run} runs twistd programmatically (the C{ockamtw-node} console script), so
the plugin works from an editable install too.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional

from twisted.application.service import Service
from twisted.logger import LogLevel, Logger, textFileLogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from twisted.python.failure import Failure

from .api import Node
from .secure.channel import HandshakeLimits
from .control import state as st
from .control.server import ControlService, NodeController
from .errors import NoSuchAddress, OckamError, WireError
from .routing import Address, MultiAddr
from .portal import stream_limits
from .relay import RelayLimits
from .transport.limits import (
    FIRST_FRAME_TIMEOUT,
    FRAME_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    PARTIAL_FRAME_BUDGET,
)
from .endpoints import client_target, server_description

log = Logger(namespace="ockamtw.tap")

#: Rotate the log file when it reaches this many bytes (C{--log-max-size}).
LOG_MAX_SIZE = 10 * 1000 * 1000
#: Keep this many rotated log files, C{LOG.1} to C{LOG.N} (C{--log-max-files}).
LOG_MAX_FILES = 5

_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def _count(option: str, value: str, least: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < least:
        raise usage.UsageError(f"--{option}: expected a whole number from {least}, got {value!r}")
    return int(value)


def _seconds(option: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < 1e9):  # also refuses nan and inf
        raise usage.UsageError(f"--{option}: expected seconds (0 for never), got {value!r}")
    return seconds


def parse_size(text: str) -> int:
    """
    C{10000000}, C{10M}, C{512k} or C{1G} (powers of 1000) in bytes.

    @raise ValueError: for anything else, or less than 1 byte.
    """
    value = text.strip().lower()
    if value.endswith("b"):
        value = value[:-1]
    unit = value[-1:] if value[-1:] in ("k", "m", "g") else ""
    number = value[: len(value) - len(unit)]
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise ValueError(f"expected a size such as 10000000, 10M or 512k, got {text!r}")
    return int(number) * _SIZE_UNITS[unit]


class NodeLog:
    """
    twistd's log file, written by the node process itself and rotated by
    size: C{LOG} is renamed C{LOG.1} (C{LOG.1} to C{LOG.2}, ...) when it
    reaches C{max_size} bytes, and only C{max_files} old files are kept.
    Files are created with mode 0600.

    L{Options} installs one (twistd's C{--logger}) whenever twistd would log
    to a file: C{--logfile FILE}, or C{twistd.log} when it daemonizes.
    """

    def __init__(self, path: str, max_size: int, max_files: int, rotate_on_usr1: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.max_size = max_size
        self.max_files = max_files
        self.rotate_on_usr1 = rotate_on_usr1
        self._file: Optional[LogFile] = None
        self._observer = None

    def file(self) -> LogFile:
        if self._file is None:
            self._file = LogFile.fromFullPath(
                self.path, rotateLength=self.max_size, maxRotatedFiles=self.max_files, defaultMode=0o600
            )
        return self._file

    def observer(self):
        """
        The observer twistd logs to (made once).
        """
        if self._observer is None:
            self._observer = textFileLogObserver(self.file())
            if self.rotate_on_usr1:  # as twistd does for its own log file
                logfile = self.file()

                def rotate(signum, frame):
                    from twisted.internet import reactor

                    reactor.callFromThread(logfile.rotate)

                signal.signal(signal.SIGUSR1, rotate)
        return self._observer

    def critical(self, line: str) -> None:
        """
        Write C{line} to the log at once, whether or not twistd's logging
        has begun (a fatal error at start, before it has).
        """
        self.observer()(
            {
                "log_format": "{line}",
                "line": line,
                "log_level": LogLevel.critical,
                "log_namespace": log.namespace,
                "log_time": time.time(),
            }
        )
        self.file().flush()


#: The log L{Options} set up for this process (read by L{logObserver}).
_node_log: Optional[NodeLog] = None

#: The pid file twistd writes for this process, if any (set by L{Options};
#: L{_fatal} removes it when it names this process).
_pidfile: Optional[str] = None

#: twistd's options for this process (set by L{Options}): L{_fatal} tells
#: a daemonizing twistd's waiting parent through its C{statusPipe}.
_twistd_options: Optional[usage.Options] = None

#: twistd's default pid file, which a foreground C{twistd -n ockam} does not
#: write (see L{Options._foreground_pidfile}).
TWISTD_PIDFILE = "twistd.pid"


def logObserver():
    """
    twistd's C{--logger}: the observer of the log set up by L{Options}
    (standard output if there is none).
    """
    if _node_log is None:
        return textFileLogObserver(sys.stdout)
    return _node_log.observer()


class FaceOptions(usage.Options):
    """
    What the options of both C{twistd} plugins (a node, the Orchestrator)
    share: a usage mistake ends in two lines and status 2, C{--help} read
    by a program that went away (C{| head}) ends quietly, and the usage
    line names the program as it was run.
    """

    #: The command named in usage messages (C{twistd ockam}); L{run} makes
    #: it the console script's name.
    program = "twistd ockam"
    #: The console script that runs the plugin without twistd's discovery.
    script = "ockamtw-node"
    #: The plugin's name (twistd's command).
    plugin = "ockam"

    def getSynopsis(self) -> str:
        if self.program == self.script:
            return f"Usage: {self.script} [options]\n   or: {self.script} [twistd options] {self.plugin} [options]"
        return f"Usage: twistd [twistd options] {self.plugin} [options]"

    def parseOptions(self, options=None) -> None:
        """
        Parse, and when twistd (or a C{run}) is the caller, end a usage
        mistake in two lines on stderr and exit status 2 instead of
        twistd's full usage text.  Without a parent (an embedding program,
        a test), L{usage.UsageError} is raised as usual.
        """
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            usage_exit(self.program, e)

    def opt_help(self) -> None:
        """
        Display this help and exit.
        """
        try:
            sys.stdout.write(str(self) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`--help | head -1`): not an error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


class Options(FaceOptions):
    """
    Options of C{twistd ockam}.
    """

    longdesc = (
        "Run an Ockam node with the echo, uppercase and hop services. "
        "--listen 7000 listens on 127.0.0.1:7000; any server endpoint string "
        "is accepted too, e.g. tcp:7000:interface=0.0.0.0. "
        "twistd's own options (twistd --help) go before ockam; in the foreground (-n) "
        "no pid file is written unless --pidfile names one other than twistd.pid."
    )
    optParameters = [
        ["name", None, None, "The node's name (random by default)."],
        ["listen", None, None, "Where to listen: a port (on 127.0.0.1), HOST:PORT or an endpoint string."],
        [
            "state",
            None,
            None,
            "A node directory (as `ockam node create` makes): restore and keep its state there, "
            "and serve the control API on its control.sock.",
        ],
    ]

    def opt_log_max_size(self, value: str) -> None:
        """
        Rotate the log file (twistd's --logfile, or twistd.log when
        daemonized) when it reaches this size: bytes, or with k, M or G
        [default: 10M].
        """
        try:
            self["log-max-size"] = parse_size(value)
        except ValueError as e:
            raise usage.UsageError(f"--log-max-size: {e}") from None

    def opt_log_max_files(self, value: str) -> None:
        """
        How many rotated log files (LOG.1 ... LOG.N) to keep, at least 1
        [default: 5].
        """
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise usage.UsageError(f"--log-max-files: expected a number from 1, got {value!r}")
        self["log-max-files"] = int(value)

    def opt_max_connections(self, value: str) -> None:
        """
        Accepted TCP connections this node holds at most; one more is
        closed at once [default: %d, or half the open-file limit if lower].
        """
        self["max-connections"] = _count("max-connections", value, 1)

    opt_max_connections.__doc__ %= MAX_CONNECTIONS

    def opt_max_connections_per_peer(self, value: str) -> None:
        """
        Accepted TCP connections from one peer address (an IPv4 address or
        an IPv6 /64) at most [default: %d].
        """
        self["max-connections-per-peer"] = _count("max-connections-per-peer", value, 1)

    opt_max_connections_per_peer.__doc__ %= MAX_CONNECTIONS_PER_PEER

    def opt_first_frame_timeout(self, value: str) -> None:
        """
        Close an accepted connection that has not completed a frame this
        many seconds after connecting; 0: never [default: %g].
        """
        self["first-frame-timeout"] = _seconds("first-frame-timeout", value)

    opt_first_frame_timeout.__doc__ %= FIRST_FRAME_TIMEOUT

    def opt_frame_timeout(self, value: str) -> None:
        """
        Close an accepted connection that holds a partial frame while no
        frame completes for this many seconds; 0: never [default: %g].
        """
        self["frame-timeout"] = _seconds("frame-timeout", value)

    opt_frame_timeout.__doc__ %= FRAME_TIMEOUT

    def opt_partial_frame_budget(self, value: str) -> None:
        """
        Bytes of partial frames all accepted connections may hold together
        (k, M, G: powers of 1000); a connection whose read goes over is
        closed; 0: no budget [default: %d MiB].
        """
        try:
            self["partial-frame-budget"] = 0 if value.strip() == "0" else parse_size(value)
        except ValueError as e:
            raise usage.UsageError(f"--partial-frame-budget: {e}") from None

    opt_partial_frame_budget.__doc__ %= PARTIAL_FRAME_BUDGET // 2**20

    def opt_max_relays_per_connection(self, value: str) -> None:
        """
        Relays one peer (a TCP connection or a secure channel) may register
        on this node; 0: none [default: %d].
        """
        self["max-relays-per-connection"] = _count("max-relays-per-connection", value, 0)

    opt_max_relays_per_connection.__doc__ %= RelayLimits().per_owner

    def opt_max_relays(self, value: str) -> None:
        """
        Relays peers may register on this node in all; 0: none [default: %d].
        """
        self["max-relays"] = _count("max-relays", value, 0)

    opt_max_relays.__doc__ %= RelayLimits().total

    def opt_max_streams(self, value: str) -> None:
        """
        Streams (tunnelled connections, each holding a socket: an inlet's
        client, an outlet's target) this node's inlets and outlets hold at
        once; past it an outlet refuses the Ping and tells the inlet, an
        inlet closes the new client; 0: no limit [default: half the
        limit on open files, at least 64].
        """
        self["max-streams"] = _count("max-streams", value, 0)

    def opt_max_startups(self, value: str) -> None:
        """
        START:RATE:FULL, as OpenSSH's MaxStartups: with START half-open
        secure channel handshakes, refuse a new one with probability RATE%%,
        rising to 100%% at FULL (a single number: a hard limit)
        [default: %d:%d:%d].
        """
        self._handshake("max-startups", "max_startups", value, HandshakeLimits.parse_max_startups)

    opt_max_startups.__doc__ %= HandshakeLimits.max_startups

    def opt_handshake_per_peer(self, value: str) -> None:
        """
        Half-open secure channel handshakes one peer (a host, an IPv6 /64,
        or a secure channel identity) may hold [default: %d].
        """
        self._handshake("handshake-per-peer", "per_peer", value, int)

    opt_handshake_per_peer.__doc__ %= HandshakeLimits.per_peer

    def opt_handshake_peer_rate(self, value: str) -> None:
        """
        RATE/BURST: secure channel handshakes one peer may start per second
        (a token bucket of BURST) [default: %g/%d].
        """
        self._handshake("handshake-peer-rate", ("peer_rate", "peer_burst"), value, HandshakeLimits.parse_rate)

    opt_handshake_peer_rate.__doc__ %= (HandshakeLimits.peer_rate, HandshakeLimits.peer_burst)

    def opt_handshake_rate(self, value: str) -> None:
        """
        RATE/BURST: secure channel handshakes all peers together may start
        per second [default: %g/%d].
        """
        self._handshake("handshake-rate", ("rate", "burst"), value, HandshakeLimits.parse_rate)

    opt_handshake_rate.__doc__ %= (HandshakeLimits.rate, HandshakeLimits.burst)

    def opt_handshake_grace(self, value: str) -> None:
        """
        Seconds a secure channel handshake may take before its half-open
        state is removed [default: %g].
        """
        self._handshake("handshake-grace", "grace", value, float)

    opt_handshake_grace.__doc__ %= HandshakeLimits.grace

    def opt_channels_per_peer(self, value: str) -> None:
        """
        Secure channels one peer may hold open on this node's listeners;
        past it, that peer's least recently active one is closed
        [default: %d].
        """
        self._handshake("channels-per-peer", "channels_per_peer", value, int)

    opt_channels_per_peer.__doc__ %= HandshakeLimits.channels_per_peer

    def opt_max_channels(self, value: str) -> None:
        """
        Secure channels peers may hold open on a listener in all; past it,
        the least recently active one is closed [default: %d].
        """
        self._handshake("max-channels", "max_channels", value, int)

    opt_max_channels.__doc__ %= HandshakeLimits.max_channels

    def _handshake(self, option: str, field, value: str, parse) -> None:
        try:
            parsed = parse(value)
            fields = dict(zip(field, parsed)) if isinstance(field, tuple) else {field: parsed}
            HandshakeLimits(**{**self["handshake"], **fields})  # checks the values
        except (ValueError, TypeError) as e:
            raise usage.UsageError(f"--{option}: {e}") from None
        self["handshake"].update(fields)

    def opt_listen(self, value: str) -> None:
        """
        Where to listen: a port (on 127.0.0.1), HOST:PORT or an endpoint
        string.
        """
        try:
            server_description(value)  # checked here, used as typed (messages quote it)
        except WireError as e:
            raise usage.UsageError(f"--listen: {e}") from None
        self["listen"] = value

    def __init__(self) -> None:
        usage.Options.__init__(self)
        # Help texts are docstrings: one paragraph each, so that --help
        # wraps them (twistd's wrapping keeps a docstring's indentation).
        self.docs = {name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()}
        self["connect"] = []
        self["outlet"] = []
        self["inlet"] = []
        self["relay"] = []
        self["log-max-size"] = LOG_MAX_SIZE
        self["log-max-files"] = LOG_MAX_FILES
        for limit in _LIMITS + _RELAY_LIMITS + (("max-streams", "max_streams"),):
            self[limit[0]] = None  # the default
        self["handshake"] = {}

    def opt_outlet(self, value: str) -> None:
        """
        ADDRESS=HOST:PORT: a TCP outlet worker at ADDRESS to HOST:PORT
        (repeatable), e.g. outlet=127.0.0.1:9000.
        """
        address, sep, target = value.partition("=")
        if not sep or not address or not target:
            raise usage.UsageError(f"--outlet: expected ADDRESS=HOST:PORT, got {value!r}")
        try:
            Address.parse(address)
            client_target(target)
        except WireError as e:
            raise usage.UsageError(f"--outlet: {e}") from None
        if address.startswith("/service/"):
            address = address[len("/service/") :]
        self["outlet"].append((address, target))

    def opt_inlet(self, value: str) -> None:
        """
        LISTEN=ROUTE: a TCP inlet listening at LISTEN (HOST:PORT, a port, or
        an endpoint string) to the outlet at ROUTE, MultiAddr text such as
        /ip4/127.0.0.1/tcp/7000/service/outlet (repeatable).
        """
        cut = value.rfind("=/")
        if cut <= 0:
            raise usage.UsageError(f"--inlet: expected LISTEN=/ROUTE, got {value!r}")
        listen, route = value[:cut], value[cut + 1 :]
        try:
            server_description(listen)
            MultiAddr.parse(route)
        except WireError as e:
            raise usage.UsageError(f"--inlet: {e}") from None
        self["inlet"].append((listen, route))

    def opt_relay(self, value: str) -> None:
        """
        NAME@ROUTE: register relay NAME (forward_to_NAME) at the node at
        ROUTE and keep it up (repeatable), e.g. n3@/ip4/127.0.0.1/tcp/7000.
        """
        name, sep, at = value.partition("@")
        if not sep or not name or not at or "/" in name:
            raise usage.UsageError(f"--relay: expected NAME@ROUTE, got {value!r}")
        try:
            MultiAddr.parse(at)
        except WireError as e:
            raise usage.UsageError(f"--relay: {e}") from None
        self["relay"].append((name, at))

    def opt_connect(self, value: str) -> None:
        """
        Open a TCP connection to HOST:PORT at start (repeatable).
        """
        try:
            client_target(value)
        except WireError as e:
            raise usage.UsageError(f"--connect: {e}") from None
        self["connect"].append(value)

    def postOptions(self) -> None:
        for kind in ("outlet", "relay"):
            names = [item[0] for item in self[kind]]
            if len(set(names)) != len(names):
                raise usage.UsageError(f"--{kind}: the same name is given twice")
        name = self["name"]
        if name is not None and (name == "" or "/" in name or name.strip() != name):
            raise usage.UsageError(f"--name: not a valid node name: {name!r}")
        self._foreground_pidfile()
        self._rotate_twistd_log()

    def _foreground_pidfile(self) -> None:
        """
        A foreground node (C{twistd -n ockam}) writes no pid file unless
        C{--pidfile} names one other than twistd's default C{twistd.pid}:
        several nodes started in one directory (C{twistd -n ockam ... &},
        as the README does) would otherwise refuse to start, each finding
        the first one's C{twistd.pid}.  A daemon keeps twistd's default.
        """
        global _pidfile, _twistd_options
        parent = getattr(self, "parent", None)
        if not isinstance(parent, usage.Options) or "pidfile" not in parent:
            return
        _twistd_options = parent
        if parent.get("nodaemon") and parent["pidfile"] == TWISTD_PIDFILE:
            parent["pidfile"] = ""
        _pidfile = os.path.abspath(parent["pidfile"]) if parent["pidfile"] else None
        if _pidfile:
            # twistd writes it after this; a directory that is not there or
            # not writable would end in a traceback.
            folder = os.path.dirname(_pidfile)
            if not os.path.isdir(folder):
                raise usage.UsageError(f"--pidfile: no directory {folder}")
            if not os.access(folder, os.W_OK) or (os.path.exists(_pidfile) and not os.access(_pidfile, os.W_OK)):
                raise usage.UsageError(f"--pidfile: cannot write {_pidfile}: permission denied")

    def _rotate_twistd_log(self) -> None:
        """
        When twistd (our parent options) would log to a file, log there
        through a L{NodeLog} instead, rotated by C{--log-max-size} and
        C{--log-max-files}: twistd's own file grows to 1 MB pieces without
        a bound on their number.  Standard output (C{-n}), syslog and a
        C{--logger} of the user's are left alone.
        """
        global _node_log
        parent = getattr(self, "parent", None)
        if not isinstance(parent, usage.Options) or "logfile" not in parent:
            return
        if parent.get("logger") or parent.get("syslog"):
            return
        path = parent.get("logfile")
        nodaemon = bool(parent.get("nodaemon"))
        if path == "-" or (not path and nodaemon):
            return
        _node_log = NodeLog(path or "twistd.log", self["log-max-size"], self["log-max-files"], not nodaemon)
        parent["logger"] = f"{__name__}.logObserver"


#: Options of L{ockamtw.transport.limits.ConnectionLimits}, by attribute
#: (for the timeouts and the budget, 0 is off: C{None}).
_LIMITS = (
    ("max-connections", "max_connections"),
    ("max-connections-per-peer", "max_per_peer"),
    ("first-frame-timeout", "first_frame_timeout"),
    ("frame-timeout", "frame_timeout"),
    ("partial-frame-budget", "partial_frame_budget"),
)
#: Options of L{ockamtw.relay.RelayLimits}, by attribute.
_RELAY_LIMITS = (
    ("max-relays-per-connection", "per_owner"),
    ("max-relays", "total"),
)


def apply_limits(node, options) -> None:
    """
    Set the node's limits given in C{options} (the others keep their
    defaults): its TCP transport's (C{node.tcp.guard.limits}), its outlets'
    (L{stream_limits}) and its relay
    services' (C{node.relay_limits}, shared by both services through
    C{node.relay_registry}), before anything is accepted.
    """
    limits = node.tcp.guard.limits
    for option, attribute in _LIMITS:
        if options[option] is not None:
            setattr(limits, attribute, options[option] or None)
    if options["max-streams"] is not None:
        stream_limits(node).max_streams = options["max-streams"] or None
    given = [(attribute, options[option]) for option, attribute in _RELAY_LIMITS if options[option] is not None]
    registry = getattr(node, "relay_registry", None)
    if given and registry is not None:
        relay_limits = RelayLimits(registry.limits.per_owner, registry.limits.total)
        for attribute, value in given:
            setattr(relay_limits, attribute, value)
        node.relay_limits = relay_limits
        registry.limits = relay_limits


def _fatal(line: str) -> None:
    """
    End twistd before the reactor runs: one line on the real stderr (twistd
    has redirected sys.stderr into its log by now) and in the log file if
    there is one (its logging may not have begun yet), exit status 1.  A
    daemonizing twistd's parent, which waits for its child's word, gets the
    line and exits with status 1 too (it would wait for ever otherwise);
    the pid file written for this process is removed first, so that it is
    gone when twistd (or its parent) has exited.
    """
    stream = sys.__stderr__ or sys.stderr
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # nobody reads it any more: the log has it
        pass
    if _node_log is not None:
        try:
            _node_log.critical(line)
        except OSError:
            pass
    _remove_own_pidfile()
    _tell_daemon_parent(line)
    raise SystemExit(1)


def _tell_daemon_parent(line: str) -> None:
    """
    Write C{line} as a failure (C{"1 ..."}, at most 100 bytes) to the pipe
    a daemonizing twistd's parent reads; twistd itself writes it only for
    an L{Exception}, not for the L{SystemExit} of L{_fatal}.
    """
    if _twistd_options is None:
        return
    pipe = _twistd_options.get("statusPipe")
    if pipe is None:
        return
    _twistd_options["statusPipe"] = None
    try:
        os.write(pipe, f"1 {line}".encode("ascii", "backslashreplace")[:100])
        os.close(pipe)
    except OSError:
        pass


def _remove_own_pidfile() -> None:
    """
    Remove the pid file twistd wrote for this process: twistd removes it
    only when the reactor has run, and a failed start ends before.  A pid
    file naming another process (a node already running there) is left.
    """
    if not _pidfile:
        return
    try:
        with open(_pidfile) as f:
            pid = int(f.read().strip() or 0)
        if pid == os.getpid():
            os.remove(_pidfile)
    except (OSError, ValueError):
        pass


def usage_exit(program: str, error) -> None:
    """
    End a usage mistake: two lines on stderr, exit status 2.
    """
    print(f"{program}: {error}", file=sys.stderr)
    print(f"Run '{program} --help' for the options.", file=sys.stderr)
    raise SystemExit(2)


def _at_once(node: Node, what: str, d):
    """
    The result of C{d}, which must have fired already (binding and
    starting workers are synchronous); a failure ends the process.
    """
    results: list = []
    d.addBoth(results.append)
    if not results:
        _fatal(f"ockam: node {node.name}: {what} did not complete at start")
    result = results[0]
    if isinstance(result, Failure):
        error = result.value
        reason = str(error) if isinstance(error, OckamError) else result.getErrorMessage()
        _fatal(f"ockam: node {node.name}: {what}: {reason}")
    return result


class _ListenerService(Service):
    """
    Listens when the application starts; a failure to bind ends the process
    at once with status 1 and a one-line reason.
    """

    def __init__(self, node: Node, description: str, controller=None) -> None:
        self.node = node
        self.description = description
        self.controller = controller
        self.listener = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.listener = _at_once(self.node, "listener", self.node.tcp.listen(self.description))
        if self.controller is not None:
            self.controller.listener = self.listener


class _ConnectService(Service):
    """
    Opens a TCP connection when the node starts; a failure is logged.
    """

    def __init__(self, node: Node, target: str) -> None:
        self.node = node
        self.target = target

    def startService(self) -> None:
        Service.startService(self)

        def failed(f):
            log.error(
                "node {node}: {reason}",
                node=self.node.name,
                target=self.target,
                reason=f.getErrorMessage(),
            )

        self.node.tcp.connect(self.target).addErrback(failed)


class _InletService(Service):
    """
    Starts an inlet given with C{--inlet} with the node; a failure to bind
    ends the process like the node's own listener.
    """

    def __init__(self, node: Node, listen: str, route: str) -> None:
        self.node = node
        self.listen = listen
        self.route = route

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        _at_once(self.node, f"inlet {self.listen}", self.node.create_inlet(self.listen, self.route))


class _RelayService(Service):
    """
    Registers a relay given with C{--relay} when the node starts, and keeps
    it up.
    """

    def __init__(self, node: Node, name: str, at: str) -> None:
        self.node = node
        self.name = name
        self.at = at

    def startService(self) -> None:
        Service.startService(self)
        if self.name not in self.node.relays:  # restored from the node's state
            self.node.add_relay(self.at, name=self.name)


class _SaveState(Service):
    """
    Records the node's state (e.g. the port a listener on port 0 got) once
    everything has started.
    """

    def __init__(self, controller) -> None:
        self.controller = controller

    def startService(self) -> None:
        Service.startService(self)
        self.controller.save()


def _load_identity(state_dir: str, state: dict, home: str):
    """
    The node's identity: the named one (C{state["identity"]}, shared under
    C{$OCKAM_HOME/identities/}), else its own in C{DIR/identity.json},
    created (mode 0600) at first start.
    """
    from .secure.errors import IdentityError
    from .secure.identity import LocalIdentity

    name = state.get("identity")
    path = st.identity_path(home, name) if name else os.path.join(state_dir, st.IDENTITY)
    try:
        if os.path.exists(path):
            return LocalIdentity.load(path)
        if name:
            _fatal(f"ockam: no identity named {name!r} (create it with: ockam identity create {name})")
        identity = LocalIdentity.create()
        identity.save(path)
        return identity
    except (IdentityError, OSError) as e:
        _fatal(f"ockam: cannot use the identity in {path}: {e}")


def _node_resolver(home: str):
    def resolve(name: str) -> str:
        address = st.listener_of(home, name)
        if not address:
            raise NoSuchAddress(f"no node named {name!r} (see: ockam node list)")
        return address

    return resolve


class _CleanSigterm(Service):
    """
    A node stopped by SIGTERM exits with status 0.

    Until the reactor runs, Python's default SIGTERM disposition would kill
    the process (status 143): this service's handler, installed before any
    other part of the node starts, stops the reactor instead.  The reactor
    installs its own handlers as it starts (Twisted's would have twistd
    re-raise the signal at exit, status 143): once it runs
    (C{callWhenRunning}), this service's handler takes SIGTERM back.  It
    gives the signal back to whoever had it when the node stops.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._previous = None
        self._installed = False
        self._terminated = False

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        try:
            self._previous = signal.signal(signal.SIGTERM, self._term)
        except ValueError:  # not the main thread: leave signals alone
            return
        self._installed = True
        self.reactor.callWhenRunning(self._take_back)

    def _take_back(self) -> None:
        if self._installed and self.running:
            signal.signal(signal.SIGTERM, self._term)

    def _term(self, signum, frame) -> None:
        self._terminated = True
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self):
        Service.stopService(self)
        if self._terminated:
            log.info("SIGTERM: node stopped")
        if self._installed:
            self._installed = False
            if signal.getsignal(signal.SIGTERM) == self._term and self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)


def makeService(options, reactor=None):
    """
    The node service for C{twistd ockam}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    state_dir = options["state"]
    state = None
    name, listen = options["name"], options["listen"]
    if state_dir:
        try:
            state = st.load_state(state_dir)
        except st.StateError as e:
            _fatal(f"ockam: {e}")
        problem = st.socket_path_problem(state_dir)
        if problem:
            _fatal(f"ockam: {problem}")
        st.secure_node_dir(state_dir)  # 0700 and 0600, also for a node made by an older version
        name = name or state.get("name")
        if not listen and state.get("listen"):
            listen = state["listen"]  # as recorded (HOST:PORT): said so when it cannot be bound
    home = os.path.dirname(os.path.dirname(state_dir)) if state_dir else st.ockam_home()

    identity = _load_identity(state_dir, state, home) if state_dir else None
    try:
        handshake_limits = HandshakeLimits(**options["handshake"]) if options["handshake"] else None
    except ValueError as e:
        _fatal(f"ockam: {e}")
    node = Node(reactor, name=name, identity=identity, handshake_limits=handshake_limits)
    apply_limits(node, options)
    node.node_resolver = _node_resolver(home)
    # What the node's state keeps (each feature's part) is restored by its
    # controller; the options add to it.
    controller = NodeController(node, state_dir) if state_dir else None
    if listen:
        node.add_service_first(_ListenerService(node, listen, controller))
    node.add_service_first(_CleanSigterm(reactor))  # first of all: see its docstring
    for target in options["connect"]:
        _ConnectService(node, target).setServiceParent(node)
    for address, target in options["outlet"]:
        _at_once(node, f"outlet {address}", node.create_outlet(address, target))
    for listen_, route in options["inlet"]:
        _InletService(node, listen_, route).setServiceParent(node)
    for relay_name, at in options["relay"]:
        _RelayService(node, relay_name, at).setServiceParent(node)
    if controller is not None:
        ControlService(reactor, controller, os.path.join(state_dir, st.SOCKET)).setServiceParent(node)
        _SaveState(controller).setServiceParent(node)
    log.info("node {node} starting", node=node.name)
    return node


def run(argv=None) -> None:
    """
    Run C{twistd ockam ARGS} programmatically; twistd's own options come
    before C{ockam} (default C{-n}, i.e. in the foreground).
    """
    from twisted.application.service import ServiceMaker
    from twisted.scripts import twistd

    maker = ServiceMaker("ockamtw", "ockamtw.tap", "An Ockam node (ockamtw)", "ockam")

    def options() -> Options:
        o = Options()
        o.program = "ockamtw-node"
        return o

    class _Config(twistd.ServerOptions):
        @property
        def subCommands(self):
            self.loadedPlugins = {"ockam": maker}
            return [("ockam", None, options, maker.description)]

    args = list(sys.argv[1:] if argv is None else argv)
    if "ockam" not in args:
        args = ["-n", "ockam"] + args
    config = _Config()
    try:
        config.parseOptions(args)
    except usage.error as e:  # twistd's own options (ockam's exit in Options)
        usage_exit("ockamtw-node", e)
    twistd.runApp(config)


if __name__ == "__main__":
    run()
