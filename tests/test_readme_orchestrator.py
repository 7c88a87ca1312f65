"""
The README's Orchestrator block is the seed's last section as issue #13
prints it, command for command: L{tests.test_doc_commands} runs it as
printed (a session of its own, in a network namespace: its ports are the
seed's), so the section runs as printed, not a paraphrase of it.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from .docblocks import sessions_of


#: The commands of the seed's Orchestrator section as issue #13 prints them
#: (without their comments): the README's block is these, in this order.
SEED_ORCHESTRATOR = [
    "ockam orchestrator start",
    "ockam enroll",
    "ockam project information --output json > project.json",
    "ockam node create n1 --project project.json",
    "ockam node create n3 --project project.json",
    "ockam forwarder create n3 --at /project/default --to /node/n3",
    "ockam message send hello --to /project/default/service/forward_to_n3/service/uppercase",
    "python3 -m http.server --bind 127.0.0.1 9000 &",
    "ockam tcp-outlet create --at /node/n3 --from /service/outlet --to 127.0.0.1:9000",
    "ockam tcp-inlet create --at /node/n1 --from 127.0.0.1:6000 --to /project/default/service/forward_to_n3/service/outlet",
    "curl --head 127.0.0.1:6000",
    "ockam node delete --all && ockam orchestrator stop",
]


class SeedOrchestratorBlockTests(SynchronousTestCase):
    def test_readme_runs_the_seed_orchestrator_section(self):
        """
        The README's Orchestrator block is the seed's section, command for
        command, run as printed as a session of its own (by
        L{DocCommandTests}, in a namespace: its ports are the seed's), and
        it promises what the seed prints.
        """
        sessions = [s for s in sessions_of("README.md") if any(c.text.startswith("ockam orchestrator start")
                                                                for c in s.commands)]
        self.assertEqual(len(sessions), 1, "README.md: one session starts the Orchestrator")
        (session,) = sessions
        self.assertEqual([b.kind for b in session.blocks], ["run"])
        commands = [re.sub(r"\s+#.*$", "", c.text) for c in session.commands]
        self.assertEqual(commands, SEED_ORCHESTRATOR)
        promised = {c.text.split("#")[0].strip(): c.promises for c in session.commands if c.promises}
        self.assertEqual(promised, {
            SEED_ORCHESTRATOR[5]: ["/service/forward_to_n3"],
            SEED_ORCHESTRATOR[6]: ["HELLO"],
            SEED_ORCHESTRATOR[10]: [r"HTTP/1\.0 200 OK"],
        })
