"""
The code blocks of the documentation, and a runner for the ones a user would
type: L{tests.test_doc_commands} runs them as printed.

Every fenced block of the documents in L{DOCUMENTS} is one of:

- run (the default for C{sh} and C{python} blocks): a block, with the blocks
  that say C{<!-- continues the block above -->} after it, is a I{session}:
  its commands run in order in one C{bash}, as a user would type them in one
  terminal, in a fresh network and PID namespace (so the fixed ports of the
  docs are free and nothing outlives the session), with C{HOME} a new empty
  directory and the working directory one whose entries are links to the
  checkout's (C{python examples/seed_demo.py} works, files the commands write
  stay out of the checkout);
- C{<!-- each line on its own -->}: every command is a program that runs
  until stopped (a node in the foreground); each runs alone in its own
  session, until it prints what it promises;
- C{<!-- run after: COMMAND -->}: run, after COMMAND (which the prose
  before the block names);
- C{<!-- not run: REASON -->}: an output sample, an installation, the test
  suite itself, a fragment;
- C{<!-- run by tests/FILE.py -->}: that test module runs it, as printed;
- C{<!-- example: PATH -->}: the file PATH, byte for byte, which a test runs;
- a directive of Sphinx (C{```{toctree}}), not code.

A command that ends in a comment C{# prints TEXT} promises TEXT in its output
(C{<word>} stands for any text without spaces; C{A ... B}: A and B): the runner retries it, as a
user would, until TEXT appears (bounded by L{PROMISE_SECONDS}); for a
program that runs until stopped, it waits for TEXT while the program runs.
Any other command must exit with status 0.  A C{python} block is saved to a
file and run with C{python3}; its C{# prints TEXT} comments are its promises.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The documents whose blocks are run or marked, relative to the checkout.
DOCUMENTS = ["README.md", "benchmarks/README.md"] + sorted(
    "docs/" + name for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")
)

#: How long a command with a promise is retried (or a program that runs
#: until stopped is waited for) before its session fails.
PROMISE_SECONDS = 30

#: How long one session may take in all.
SESSION_SECONDS = 150

RUN_LANGUAGES = ("sh", "python")

_MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")
_PRINTS = re.compile(r"\s#\s*prints\s+(.+?)\s*$")


@dataclass
class Block:
    document: str
    line: int  # of the opening fence, from 1
    language: str
    text: str
    marker: Optional[str] = None

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def kind(self) -> str:
        """
        C{run}, C{continues}, C{each line}, C{run after}, C{not run},
        C{run by}, C{example}, C{directive} or C{unmarked} (a block of
        another language with no marker).
        """
        if self.language.startswith("{"):
            return "directive"
        m = self.marker or ""
        for kind in ("not run:", "run after:", "run by ", "example:"):
            if m.startswith(kind):
                return kind.rstrip(": ")
        if m == "continues the block above":
            return "continues"
        if m == "each line on its own":
            return "each line"
        if m:
            return "unknown marker"
        return "run" if self.language in RUN_LANGUAGES else "unmarked"

    @property
    def argument(self) -> str:
        """
        What follows the marker's keyword (the reason, the command, the
        test module, the path).
        """
        m = self.marker or ""
        for kind in ("not run:", "run after:", "run by ", "example:"):
            if m.startswith(kind):
                return m[len(kind) :].strip()
        return ""


def blocks_of(document: str) -> List[Block]:
    """
    The fenced blocks of C{document} (relative to the checkout), with the
    HTML comment on the line just before each, if any.
    """
    with open(os.path.join(REPO, document), encoding="utf-8") as f:
        lines = f.read().split("\n")
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(```+)\s*(\S*)(?:\s.*)?$", lines[i])
        if not m:
            i += 1
            continue
        fence, language = m.group(1), m.group(2)
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{document}:{start + 1}: the block is not closed")
        marker = None
        if start > 0:
            mm = _MARKER.match(lines[start - 1].strip())
            if mm:
                marker = mm.group(1)
        out.append(Block(document, start + 1, language, "\n".join(body) + "\n", marker))
        i += 1
    return out


def all_blocks() -> List[Block]:
    return [b for document in DOCUMENTS for b in blocks_of(document)]


# --- commands -------------------------------------------------------------------------------------


def promise_patterns(text: str) -> List[str]:
    """
    The patterns of a promise C{A ... B}: each part must appear.
    """
    return [promise_pattern(part) for part in re.split(r"\s+\.\.\.\s+", text.strip()) if part.strip(". ")]


def promise_pattern(text: str) -> str:
    """
    The extended regular expression (for C{grep -E}) of a promise: TEXT
    literally, C{<word>} for any text without spaces, a C{...} at either
    end dropped.
    """
    text = text.strip()
    if text.startswith("..."):
        text = text[3:].lstrip()
    if text.endswith("..."):
        text = text[:-3].rstrip()
    parts = re.split(r"(<[^<>\s]+>)", text)
    out = []
    for part in parts:
        if re.fullmatch(r"<[^<>\s]+>", part):
            out.append(r"[^[:space:]]+")
        else:
            out.append("".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in part))
    return "".join(out)


@dataclass
class Command:
    text: str  # as printed (continuation lines kept)
    promises: List[str] = field(default_factory=list)  # grep -E patterns
    server: bool = False  # runs until stopped: wait for its promises while it runs
    python: Optional[str] = None  # a python block's program text
    where: str = ""


def shell_commands(block: Block) -> List[Command]:
    """
    The commands of a C{sh} block: its lines, with continuation lines joined
    to theirs; blank lines and comment lines are not commands.
    """
    commands: List[Command] = []
    pending: List[str] = []
    first = 0
    for n, line in enumerate(block.text.split("\n"), start=block.line + 1):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = n
        pending.append(line)
        if line.endswith("\\"):
            continue
        text = "\n".join(pending)
        pending = []
        m = _PRINTS.search(text.split("\n")[-1])
        promises = promise_patterns(m.group(1)) if m else []
        commands.append(Command(text, promises, where=f"{block.document}:{first}"))
    if pending:
        raise AssertionError(f"{block.where}: the block ends in a continuation line")
    return commands


def python_command(block: Block) -> Command:
    promises = [p for m in re.findall(r"#\s*prints\s+(.+?)\s*$", block.text, re.M) for p in promise_patterns(m)]
    name = re.sub(r"[^A-Za-z0-9]+", "_", block.document)
    return Command(f"python3 {name}_{block.line}.py", promises, python=block.text, where=block.where)


def block_commands(block: Block) -> List[Command]:
    if block.language == "python":
        return [python_command(block)]
    return shell_commands(block)


@dataclass
class Session:
    """
    Commands run in order in one shell and namespace.
    """

    name: str
    commands: List[Command]
    blocks: List[Block]
    promise_seconds: float = PROMISE_SECONDS


def sessions_of(document: str) -> List[Session]:
    """
    The sessions that run the blocks of C{document}.
    """
    sessions: List[Session] = []
    for block in blocks_of(document):
        kind = block.kind
        if kind == "run":
            sessions.append(Session(block.where, block_commands(block), [block]))
        elif kind == "run after":
            setup = shell_commands(Block(block.document, block.line - 2, "sh", block.argument + "\n"))
            sessions.append(Session(block.where, setup + block_commands(block), [block]))
        elif kind == "continues":
            if not sessions or sessions[-1].blocks[-1].document != document:
                raise AssertionError(f"{block.where}: continues no block")
            sessions[-1].commands += block_commands(block)
            sessions[-1].blocks.append(block)
        elif kind == "each line":
            for command in block_commands(block):
                command.server = True
                sessions.append(Session(command.where, [command], [block]))
    return sessions


# --- the namespace -----------------------------------------------------------------------------------


def unshare_argv() -> List[str]:
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        argv.insert(1, "--map-root-user")
    return argv


def namespace_problem() -> Optional[str]:
    """
    Why commands cannot be run in a namespace of their own here, or
    C{None} when they can.
    """
    try:
        r = subprocess.run(unshare_argv() + ["true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{' '.join(unshare_argv())} true: {e}"
    if r.returncode != 0:
        return f"{' '.join(unshare_argv())} true: status {r.returncode}: {r.stderr.strip()}"
    return None


_LO_UP = (
    "import fcntl, socket, struct\n"
    "s = socket.socket()\n"
    "flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH14s', b'lo', 0, bytes(14)))[:18])[1]\n"
    "fcntl.ioctl(s, 0x8914, struct.pack('16sH14s', b'lo', flags | 1, bytes(14)))\n"
)

_DRIVER = r"""
__fail() {
    printf '\n@@@ FAILED %s: %s\n' "$1" "$2"
    for __f in __out.*; do [ -e "$__f" ] && { printf '\n@@@ output of %s:\n' "$__f"; tail -c 4000 "$__f"; }; done
    exit 1
}
__promised() {  # FILE PATTERN...: every pattern is in FILE
    local __file=$1; shift
    local __p
    for __p in "$@"; do grep -Eq -- "$__p" "$__file" || return 1; done
    return 0
}
__run() {  # N WHERE SERVER PATTERN... ; the command is in __cmd.N
    local __n=$1 __where=$2 __server=$3
    shift 3
    local __end=$((SECONDS + PROMISE_SECONDS)) __try=0 __status
    while :; do
        __try=$((__try + 1))
        printf '@@@ %s (%s, try %s)\n' "$(head -c 300 "__cmd.$__n")" "$__where" "$__try"
        if [ "$__server" = 1 ]; then
            eval "$(cat "__cmd.$__n")" > "__out.$__n" 2>&1 &
            local __pid=$!
            while kill -0 "$__pid" 2>/dev/null; do
                __promised "__out.$__n" "$@" && { printf '@@@ promised output seen, still running\n'; return 0; }
                [ $SECONDS -ge $__end ] && __fail "$__where" "not within $PROMISE_SECONDS s: $*"
                sleep 0.1
            done
            wait "$__pid"
            __status=$?
        else
            eval "$(cat "__cmd.$__n")" > "__out.$__n" 2>&1
            __status=$?
        fi
        cat "__out.$__n"
        if [ $# -eq 0 ]; then
            [ "$__status" -eq 0 ] || __fail "$__where" "status $__status"
            return 0
        fi
        [ "$__status" -eq 0 ] && __promised "__out.$__n" "$@" && return 0
        [ $SECONDS -ge $__end ] && __fail "$__where" "status $__status; not within $PROMISE_SECONDS s: $*"
        sleep 0.2
    done
}
"""


def session_script(session: Session, directory: str) -> str:
    """
    Write the files of C{session} into C{directory} (the working directory
    of the session) and return the driver script, run as C{bash SCRIPT}.
    """
    lines = [
        "cd " + shlex.quote(directory),
        f"PROMISE_SECONDS={int(session.promise_seconds)}",
        shlex.quote(sys.executable) + " -c " + shlex.quote(_LO_UP) + " || { echo '@@@ cannot set lo up'; exit 1; }",
        _DRIVER,
    ]
    for n, command in enumerate(session.commands):
        if command.python is not None:
            with open(os.path.join(directory, command.text.split()[-1]), "w", encoding="utf-8") as f:
                f.write(command.python)
        with open(os.path.join(directory, f"__cmd.{n}"), "w", encoding="utf-8") as f:
            f.write(command.text + "\n")
        lines.append(
            " ".join(
                ["__run", str(n), shlex.quote(command.where), "1" if command.server else "0"]
                + [shlex.quote(p) for p in command.promises]
            )
        )
    lines.append("printf '\\n@@@ SESSION DONE\\n'")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def session_environment(home: str) -> dict:
    """
    A user's environment: this interpreter's scripts (C{ockam}, C{twistd},
    C{python3}) first on C{PATH}, C{HOME} a new directory, the checkout on
    C{PYTHONPATH} (for the twistd plugin of an editable install).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCKAM")}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = home
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "80"
    return env


def checkout_entries(repo: str = REPO) -> List[str]:
    """
    The top-level entries of the checkout that a clean clone has: those
    git tracks, or (no git, an unpacked sdist) all but hidden ones and
    trial's.  What a user's own run of the docs' commands left in the
    checkout (C{twistd.pid} of a C{twistd web} still running or killed,
    C{project.json}, C{orchestrator-data}) is not among them: a session
    must not see it (a pid file there makes the session's C{twistd} say
    "Another twistd server is running").
    """
    try:
        listed = subprocess.run(["git", "-C", repo, "ls-files", "-z"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout:
        return sorted({path.split("/", 1)[0] for path in listed.stdout.decode().split("\0") if path})
    return sorted(name for name in os.listdir(repo) if not name.startswith((".", "_trial_temp")))


def working_directory(parent: str, repo: str = REPO) -> str:
    """
    A directory in C{parent} whose entries are symbolic links to the
    checkout's top-level entries (L{checkout_entries}).
    """
    work = os.path.join(parent, "work")
    os.makedirs(work)
    for name in checkout_entries(repo):
        if name.startswith("."):
            continue
        os.symlink(os.path.join(repo, name), os.path.join(work, name))
    return work


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        v = reason.value
        if isinstance(v, ProcessDone):
            self.ended.callback(0)
        elif isinstance(v, ProcessTerminated):
            self.ended.callback(v.exitCode if v.exitCode is not None else -(v.signal or 0))
        else:
            self.ended.callback(None)


async def run_session(testcase, session: Session, seconds: float = SESSION_SECONDS, env: Optional[dict] = None):
    """
    Run C{session} in a namespace of its own; returns C{(status, output)}.
    Everything the session started is killed when it ends (its namespace's
    first process exits) or at the test's cleanup.  C{env}: variables
    added to the user's environment (L{session_environment}).
    """
    # Short: a node's control socket path must fit in 107 bytes.
    parent = tempfile.mkdtemp(prefix="ockdoc-")
    testcase.addCleanup(shutil.rmtree, parent, True)
    home = os.path.join(parent, "home")
    os.makedirs(home)
    work = working_directory(parent)
    script = os.path.join(parent, "session.sh")
    with open(script, "w", encoding="utf-8") as f:
        f.write(session_script(session, work))
    proto = _Collect()
    argv = unshare_argv() + ["bash", script]
    environment = session_environment(home)
    environment.update(env or {})
    transport = reactor.spawnProcess(proto, argv[0], argv, env=environment, path=work)

    def kill():
        if not proto.ended.called:
            try:
                transport.signalProcess("KILL")  # unshare --kill-child: the namespace goes with it
            except Exception:
                pass
        return proto.ended

    testcase.addCleanup(kill)
    timer = reactor.callLater(seconds, kill)
    status = await proto.ended
    if timer.active():
        timer.cancel()
    return status, proto.output.decode("utf-8", "replace")


_problem: list = []


def cached_namespace_problem() -> Optional[str]:
    """
    L{namespace_problem}, asked once per process.
    """
    if not _problem:
        _problem.append(namespace_problem())
    return _problem[0]


class NamespaceTestCase(TestCase):
    def setUp(self):
        problem = cached_namespace_problem()
        if problem:
            self.fail(
                "the docs' commands run in a network and PID namespace of their own (their ports are fixed), "
                f"which cannot be made here: {problem}. Run the tests as root, or allow unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1)."
            )
        if shutil.which("curl") is None:
            self.fail("the docs' commands use curl: install it (apt-get install curl)")
