"""
The benchmark suite's smoke mode (``python -m benchmarks --quick``) runs to
the end, bounded in time, and writes a JSON with every scenario.

Absolute numbers are not checked (CI does not gate on them); the ockamtw
scenarios must have produced numbers, and no process of the run may be
left behind.  Peers that are not installed are skipped by the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from .helpers import REPO_ROOT, subprocess_env

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
]
OCKAM_PATHS = ["ockam_portal_1node", "ockam_inlet_outlet", "ockam_relay"]


class QuickBenchmarkTests(TestCase):
    timeout = 150

    def test_quick_mode(self):
        out = tempfile.mkdtemp(prefix="ockbench-smoke-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", out]))
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--out", out, "--no-docs"],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        with open(os.path.join(out, "quick.json")) as f:
            doc = json.load(f)
        self.assertTrue(os.path.exists(os.path.join(out, "quick.md")))
        self.assertEqual(doc["mode"], "quick")
        self.assertLess(doc["elapsed_s"], 90)
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
        for hops in ("0_relay_hops", "1_relay_hop"):
            self.assertGreater(scenarios["routed_rtt"]["results"][hops]["messages_per_second"]["median"], 0)
        for n, entry in scenarios["concurrent_connections"]["results"].items():
            self.assertTrue(entry["all_succeeded"], entry)
            self.assertEqual(set(entry["nodes"]), {"inlet", "relay", "outlet"})
        self.assertEqual(doc["errors"], [])
        self.assertEqual(doc["leftover_processes"], [])
