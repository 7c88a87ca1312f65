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
OCKAM_PATHS = ["ockam_portal_1node", "ockam_inlet_outlet", "ockam_relay", "ockam_secure_relay"]


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
        for variant in ("up", "down", "p4"):
            self.assertIn(secure["target_2_gbit_s"][variant]["met"], (True, False), variant)
        self.assertEqual(secure["target_2_gbit_s"]["goal_gbit_s"], 2.0)
        self.assertEqual(secure["vs_ockam_rust_portal"]["published_gbit_s"], 1.5)
        self.assertGreater(secure["vs_ockam_rust_portal"]["ratio"], 0)
        keys = {r.get("key") for r in doc["ratios"]}
        for key in ("secure_target_2_gbit_s_up", "secure_relay_vs_relay_throughput_up", "secure_vs_ockam_rust_portal"):
            self.assertIn(key, keys)
        with open(os.path.join(out, "quick.md")) as f:
            self.assertIn("`ockam_secure_relay`", f.read())
        for hops in ("0_relay_hops", "1_relay_hop"):
            self.assertGreater(scenarios["routed_rtt"]["results"][hops]["messages_per_second"]["median"], 0)
        for n, entry in scenarios["concurrent_connections"]["results"].items():
            self.assertTrue(entry["all_succeeded"], entry)
            self.assertEqual(set(entry["nodes"]), {"inlet", "relay", "outlet"})
        self.assertEqual(doc["errors"], [])
        self.assertEqual(doc["leftover_processes"], [])
