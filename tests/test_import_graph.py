"""
The shape of the package (shared/ARCHITECTURE.md, issue #12): its import
graph, read from the source with L{ast} (imports at module level and inside
functions alike, since both are dependencies), has no circle, and the
lower layers import nothing above them:

  - the codec (L{ockamtw.wire}, L{ockamtw.routing}) imports nothing of the
    node, the transports or the features;
  - the node core (L{ockamtw.node}, L{ockamtw.wire}, L{ockamtw.access},
    L{ockamtw.interfaces} and what they import) reaches no feature, no
    transport (L{ockamtw.transport.tcp}), no control plane and no face;
  - nothing below the faces prints or ends the process.

The checks run on the real package and, so that they can be seen to fail,
on small packages made here with the faults they look for.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from typing import Dict, List, Set

from twisted.trial.unittest import SynchronousTestCase

import ockamtw

PACKAGE_DIR = os.path.dirname(os.path.abspath(ockamtw.__file__))

#: The node core: the modules named by the issue and ARCHITECTURE.md.
CORE = ("ockamtw.node", "ockamtw.wire", "ockamtw.access", "ockamtw.interfaces")
#: The codec.
CODEC = ("ockamtw.wire", "ockamtw.routing")
#: What the codec may import (itself and the errors).
CODEC_MAY = {"ockamtw.wire", "ockamtw.routing", "ockamtw.errors"}
#: Modules (and packages, with all below them) the node core must not reach:
#: features, transports, the control plane and the faces.
ABOVE_CORE = (
    "ockamtw.api",
    "ockamtw.relay",
    "ockamtw.portal",
    "ockamtw.secure",
    "ockamtw.services",
    "ockamtw.project",
    "ockamtw.abac",
    "ockamtw.transport",
    "ockamtw.control",
    "ockamtw.cli",
    "ockamtw.orchestrator",
    "ockamtw.tap",
    "ockamtw.__main__",
)
#: The faces: the only modules that may print or end the process.
FACES = ("ockamtw.cli", "ockamtw.tap", "ockamtw.orchestrator.tap", "ockamtw.__main__", "ockamtw.orchestrator.__main__")


def modules(package_dir: str) -> Dict[str, str]:
    """
    Module name -> file, for every C{.py} file of the package in
    C{package_dir} (a package's C{__init__} under the package's name).
    """
    top = os.path.basename(package_dir)
    found = {}
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, os.path.dirname(package_dir))[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            assert rel[0] == top
            found[".".join(rel)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, name) -> str:
    if not level:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(package_dir: str) -> Dict[str, Set[str]]:
    """
    Module -> the modules of the package it imports (anywhere in its
    source).  C{from P import X} names the submodule C{P.X} when there is
    one, else C{P}.
    """
    found = modules(package_dir)
    top = os.path.basename(package_dir)
    graph: Dict[str, Set[str]] = {}
    for module, path in found.items():
        is_package = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node.level, node.module)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names]
            else:
                continue
            for name in names:
                # "import a.b.c" depends on a.b.c (and its packages, which
                # are not arrows of their own here).
                while name and name not in found and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in found and (name == top or name.startswith(top + ".")) and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """
    The circles of C{graph}: its strongly connected components of more
    than one module (Tarjan's algorithm, iterative), each sorted.
    """
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def reach(graph: Dict[str, Set[str]], start: str) -> Dict[str, List[str]]:
    """
    Every module C{start} imports, directly or not, with the chain of
    imports that leads there.
    """
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph.get(v, ())):
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return paths


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_violations(graph: Dict[str, Set[str]], top: str = "ockamtw") -> List[str]:
    """
    One line per arrow out of its layer: a codec module reaching beyond
    L{CODEC_MAY}, a core module reaching anything in L{ABOVE_CORE}.
    """
    rename = (lambda names: [n.replace("ockamtw", top, 1) for n in names]) if top != "ockamtw" else list
    problems = []
    for start in rename(CODEC):
        if start not in graph:
            problems.append(f"{start}: missing")
            continue
        for module, path in sorted(reach(graph, start).items()):
            if module not in rename(CODEC_MAY):
                problems.append(f"codec imports {module}: {' -> '.join(path)}")
    for start in rename(CORE):
        if start not in graph:
            problems.append(f"{start}: missing")
            continue
        for module, path in sorted(reach(graph, start).items()):
            if _within(module, rename(ABOVE_CORE)):
                problems.append(f"node core imports {module}: {' -> '.join(path)}")
    return problems


def private_imports(package_dir: str, top: str = "ockamtw") -> List[str]:
    """
    One line per private name (C{_name}) imported from a module of another
    package, or from one top-level module of the package into another:
    what a module keeps private is its own package's business.
    """
    found = modules(package_dir)
    problems = []
    for module, path in sorted(found.items()):
        is_package = path.endswith("__init__.py")
        own = module if is_package else module.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _absolute(module, is_package, node.level, node.module)
            if target not in found:
                continue
            theirs = target if found[target].endswith("__init__.py") else target.rsplit(".", 1)[0]
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__") or f"{target}.{name}" in found:
                    continue
                if theirs != own or own == top:
                    problems.append(f"{module} imports {target}.{name}")
    return problems


#: Calls that print or end the process.
_PRINTING = {"print", "exit", "_exit", "abort", "quit"}


def process_effects(package_dir: str, top: str = "ockamtw") -> List[str]:
    """
    One line per place below the faces that prints (C{print}, a write to
    C{sys.stdout} or C{sys.stderr}) or ends the process (C{sys.exit},
    C{os._exit}, C{raise SystemExit}).
    """
    faces = [f.replace("ockamtw", top, 1) for f in FACES]
    problems = []
    for module, path in sorted(modules(package_dir).items()):
        if _within(module, faces):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found = []
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id in ("print", "exit", "quit"):
                    what = fn.id
                elif isinstance(fn, ast.Attribute) and fn.attr in _PRINTING and isinstance(fn.value, ast.Name) and fn.value.id in ("sys", "os"):
                    what = f"{fn.value.id}.{fn.attr}"
            elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr", "__stdout__", "__stderr__"):
                if isinstance(node.value, ast.Name) and node.value.id == "sys":
                    what = f"sys.{node.attr}"
            elif isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                    what = "SystemExit"
            if what is not None:
                found.append((node.lineno, what))
        problems += [f"{module}:{line}: {what}" for line, what in sorted(found)]
    return problems


class PackageTests(SynchronousTestCase):
    """
    The real package.
    """

    def setUp(self):
        self.graph = import_graph(PACKAGE_DIR)

    def test_read_everything(self):
        """
        The graph knows the modules and arrows the checks rely on (a
        reader that found nothing would pass every check).
        """
        for module in CORE + CODEC + ("ockamtw.api", "ockamtw.transport.tcp", "ockamtw.relay"):
            self.assertIn(module, self.graph)
        self.assertIn("ockamtw.transport.tcp", self.graph["ockamtw.api"])
        self.assertIn("ockamtw.routing", self.graph["ockamtw.wire"])

    def test_no_circle(self):
        """
        No module imports, directly or not, a module that imports it.
        """
        self.assertEqual(cycles(self.graph), [])

    def test_layers(self):
        """
        The codec and the node core import nothing above them.
        """
        self.assertEqual(layer_violations(self.graph), [])

    def test_no_private_names_across_packages(self):
        """
        No module takes a private name from another package (the command
        line once imported the TCP transport's C{_split_hostport}, the codec
        the routing module's C{_encode_uvarint}).
        """
        self.assertEqual(private_imports(PACKAGE_DIR), [])

    def test_quiet_below_the_faces(self):
        """
        Nothing below the faces prints or ends the process.
        """
        self.assertEqual(process_effects(PACKAGE_DIR), [])


class FaultTests(SynchronousTestCase):
    """
    The checks on small packages with the faults they look for.
    """

    def make(self, files: Dict[str, str]) -> str:
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        package = os.path.join(root, "pkg")
        for name, text in files.items():
            path = os.path.join(package, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return package

    def layered(self, **extra) -> str:
        files = {
            "__init__.py": "",
            "errors.py": "",
            "routing.py": "from .errors import X\n",
            "wire.py": "from .routing import Address\n",
            "interfaces.py": "",
            "access.py": "from .interfaces import I\n",
            "node.py": "from . import wire\nfrom .access import ANYONE\n",
            "relay.py": "from .node import Worker\n",
            "transport/__init__.py": "",
            "transport/tcp.py": "from ..wire import MAX_FRAME\n",
            "api.py": "from .relay import Relay\nfrom .transport.tcp import TcpTransport\n",
        }
        files.update(extra)
        return self.make(files)

    def test_clean(self):
        package = self.layered()
        graph = import_graph(package)
        self.assertEqual(graph["pkg.api"], {"pkg.relay", "pkg.transport.tcp"})
        self.assertEqual((cycles(graph), layer_violations(graph, "pkg")), ([], []))

    def test_circle_through_a_function(self):
        """
        An import inside a function closes a circle as well.
        """
        package = self.layered(**{"relay.py": "from .node import Worker\ndef f():\n    from .api import Node\n"})
        self.assertEqual(cycles(import_graph(package)), [["pkg.api", "pkg.relay"]])

    def test_core_to_tcp(self):
        package = self.layered(**{"node.py": "from . import wire\ndef f():\n    from .transport.tcp import TcpTransport\n"})
        self.assertEqual(
            layer_violations(import_graph(package), "pkg"),
            ["node core imports pkg.transport.tcp: pkg.node -> pkg.transport.tcp"],
        )

    def test_core_to_feature_indirectly(self):
        package = self.layered(**{"access.py": "import pkg.api\n"})
        problems = layer_violations(import_graph(package), "pkg")
        self.assertIn("node core imports pkg.relay: pkg.access -> pkg.api -> pkg.relay", problems)

    def test_codec_to_node(self):
        package = self.layered(**{"routing.py": "from .node import BaseNode\n"})
        problems = layer_violations(import_graph(package), "pkg")
        self.assertIn("codec imports pkg.node: pkg.routing -> pkg.node", problems)

    def test_private_names(self):
        package = self.layered(**{
            "wire.py": "from .routing import _encode_uvarint\n",
            "cli/__init__.py": "",
            "cli/main.py": "from ..transport.tcp import _split_hostport\nfrom .text import _ok\n",
            "cli/text.py": "_ok = 1\n",
        })
        self.assertEqual(
            private_imports(package, "pkg"),
            ["pkg.cli.main imports pkg.transport.tcp._split_hostport", "pkg.wire imports pkg.routing._encode_uvarint"],
        )

    def test_printing(self):
        package = self.layered(**{"relay.py": "import sys\nprint('x')\nsys.stdout.write('y')\nraise SystemExit(1)\n",
                                  "tap.py": "print('the face may')\n"})
        self.assertEqual(
            process_effects(package, "pkg"),
            ["pkg.relay:2: print", "pkg.relay:3: sys.stdout", "pkg.relay:4: SystemExit"],
        )
