"""
The benchmark suite's smoke mode, run as the docs print it (the blocks
marked C{<!-- run by tests/test_benchmarks_smoke.py -->}): C{python -m
benchmarks --quick}, from a directory laid out as the checkout, whose
C{benchmarks/} is a copy (so the results it writes stay out of the
checkout).  It runs to the end within the test's timeout and writes
C{benchmarks/results/quick.json} and C{quick.md} (and not the full run's
C{latest.*}) with every scenario, the project path (the seed's
Orchestrator section) and the Orchestrator scenario included.

Absolute numbers are not checked (CI does not gate on them); the ockamtw
scenarios must have produced numbers, each target's verdict must agree with
its figure, the report must say "not measured" rather than print C{None},
and no process of the run may be left behind.  Peers that are not installed
are skipped by the suite.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from .docblocks import all_blocks, shell_commands
from .helpers import REPO_ROOT, NodeProcess, async_test, subprocess_env

SCENARIOS = [
    "latency_64b",
    "connection_setup",
    "throughput_up",
    "throughput_down",
    "throughput_p4",
    "http",
    "routed_rtt",
    "head_of_line",
    "relay_forwarders",
    "concurrent_connections",
    "orchestrator_failover",
    "orchestrator_spread",
    "orchestrator_scale",
]
OCKAM_PATHS = ["ockam_portal_1node", "ockam_inlet_outlet", "ockam_relay", "ockam_secure_relay", "ockam_project"]


def documented_command() -> str:
    """
    The command of the blocks marked "run by tests/test_benchmarks_smoke.py"
    (they must all print the same one), comments dropped.
    """
    commands = set()
    for block in all_blocks():
        if block.marker == "run by tests/test_benchmarks_smoke.py":
            for command in shell_commands(block):
                commands.add(" ".join(shlex.split(command.text, comments=True)))
    if len(commands) != 1:
        raise AssertionError(f"the docs print {len(commands)} different quick runs: {sorted(commands)}")
    return commands.pop()


def checkout_like(parent: str) -> str:
    """
    A directory in C{parent} whose entries link to the checkout's, except
    C{benchmarks/}, a copy without results.
    """
    work = os.path.join(parent, "work")
    os.makedirs(work)
    for name in os.listdir(REPO_ROOT):
        if name.startswith(".") or name.startswith("_trial_temp") or name == "benchmarks":
            continue
        os.symlink(os.path.join(REPO_ROOT, name), os.path.join(work, name))
    shutil.copytree(
        os.path.join(REPO_ROOT, "benchmarks"),
        os.path.join(work, "benchmarks"),
        ignore=shutil.ignore_patterns("results", "__pycache__"),
    )
    return work


class QuickBenchmarkTests(TestCase):
    timeout = 240

    @async_test
    async def test_quick_mode(self):
        command = documented_command()
        self.assertEqual(command, "python -m benchmarks --quick")
        argv = shlex.split(command)
        python = shutil.which(argv[0], path=os.path.dirname(os.path.abspath(os.sys.executable)))
        self.assertIsNotNone(python, "no python next to this interpreter")
        parent = tempfile.mkdtemp(prefix="ockbench-smoke-")
        self.addCleanup(shutil.rmtree, parent, True)
        work = checkout_like(parent)

        proc = NodeProcess()
        transport = reactor.spawnProcess(proc, python, argv, env=subprocess_env(), path=work)

        def stop():
            if proc.exit is None:
                transport.signalProcess("TERM")  # the suite stops what it started on SIGTERM
            return proc.ended

        self.addCleanup(stop)
        self.assertEqual(await proc.wait_ended(200), (0, None), proc.text[-4000:])

        results = os.path.join(work, "benchmarks", "results")
        self.assertEqual(sorted(os.listdir(results)), ["quick.json", "quick.md"])
        with open(os.path.join(results, "quick.json")) as f:
            doc = json.load(f)
        with open(os.path.join(results, "quick.md")) as f:
            md = f.read()
        self.assertEqual(doc["mode"], "quick")
        for key in ("machine", "versions", "commit", "paths", "ratios"):
            self.assertIn(key, doc)
        scenarios = doc["scenarios"]
        for key in SCENARIOS:
            self.assertIn(key, scenarios)
            self.assertTrue(scenarios[key]["results"], key)
        for path in ["direct"] + OCKAM_PATHS:
            self.assertGreater(scenarios["throughput_up"]["results"][path]["gbit_s"]["median"], 0, path)
            self.assertGreater(scenarios["latency_64b"]["results"][path]["p50_us"]["median"], 0, path)
            self.assertIsNotNone(scenarios["connection_setup"]["results"][path]["p99_ms"]["median"], path)
            self.assertGreater(scenarios["http"]["results"][path]["requests_per_second"]["median"], 0, path)
        # The secure relay path beside the plain one: every figure, the ratio
        # secure_relay_vs_relay, the 2 Gbit/s target and the Rust portal ratio.
        secure = doc["secure_channel"]
        self.assertEqual((secure["path"], secure["compared_with"]), ("ockam_secure_relay", "ockam_relay"))
        for key in ("throughput_up", "throughput_down", "throughput_p4", "latency_p50_us", "setup_p99_ms",
                    "http_requests_per_second"):
            pair = secure["secure_relay_vs_relay"][key]
            self.assertGreater(pair["ratio"], 0, key)
            self.assertIsNotNone(pair["secure"], key)
            self.assertIsNotNone(pair["relay"], key)
        goal = secure["target_2_gbit_s"]["goal_gbit_s"]
        self.assertEqual(goal, 2.0)
        for variant in ("up", "down", "p4"):
            target = secure["target_2_gbit_s"][variant]
            self.assertGreater(target["gbit_s"], 0, variant)
            self.assertIs(target["met"], target["gbit_s"] >= goal, (variant, target))
        self.assertEqual(secure["vs_ockam_rust_portal"]["published_gbit_s"], 1.5)
        self.assertGreater(secure["vs_ockam_rust_portal"]["ratio"], 0)
        keys = {r.get("key") for r in doc["ratios"]}
        for key in ("secure_target_2_gbit_s_up", "secure_relay_vs_relay_throughput_up", "secure_vs_ockam_rust_portal"):
            self.assertIn(key, keys)
        for ratio in doc["ratios"]:
            if ratio["value"] is None or ratio["target"] is None:  # no verdict without a figure and a goal
                self.assertIsNone(ratio["met"], ratio)
        self.assertIn("`ockam_secure_relay`", md)
        self.assertEqual([line for line in md.splitlines() if "None" in line], [], "None where a figure is missing")
        # The seed's portal through a project beside the relay path, and one
        # Orchestrator with many projects and relays.
        project = doc["project"]
        self.assertEqual((project["path"], project["compared_with"]), ("ockam_project", "ockam_relay"))
        for key in ("throughput_up", "http_requests_per_second", "latency_p50_us"):
            self.assertGreater(project["project_vs_relay"][key]["ratio"], 0, key)
        orchestrator = scenarios["orchestrator_scale"]["results"]["orchestrator"]
        self.assertEqual(orchestrator["relays_up"], orchestrator["relays"], orchestrator)
        self.assertGreater(orchestrator["registrations_per_second"], 0)
        self.assertIsNotNone(orchestrator["kib_per_relay"])
        for key in ("project_vs_relay_throughput_up", "orchestrator_registrations", "orchestrator_kib_per_relay"):
            self.assertIn(key, keys)
        self.assertIn("`ockam_project`", md)
        for hops in ("0_relay_hops", "1_relay_hop"):
            self.assertGreater(scenarios["routed_rtt"]["results"][hops]["messages_per_second"]["median"], 0)
        for n, entry in scenarios["concurrent_connections"]["results"].items():
            self.assertTrue(entry["all_succeeded"], entry)
            self.assertEqual(set(entry["nodes"]), {"inlet", "relay", "outlet"})
        # The Orchestrator on PostgreSQL: the project moved and the inlet
        # served again; three instances shared the projects, and the
        # survivors of a kill serve them all.
        failover = scenarios["orchestrator_failover"]["results"]
        self.assertTrue(failover["all_recovered"], failover)
        self.assertTrue(failover["project_json_unchanged"], failover)
        self.assertGreater(failover["first_connection_s"]["median"], 0)
        spread = scenarios["orchestrator_spread"]
        self.assertEqual(sum(spread["results"]["served_per_instance"].values()), spread["settings"]["projects"])
        self.assertEqual(sum(spread["results"]["survivor_shares"].values()), spread["settings"]["projects"])
        self.assertIsNotNone(spread["results"]["all_served_again_s"])
        self.assertIn("### The Orchestrator on PostgreSQL: failover", md)
        self.assertEqual(doc["errors"], [])
        self.assertEqual(doc["leftover_processes"], [])
