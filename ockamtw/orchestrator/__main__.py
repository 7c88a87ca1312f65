"""
C{python -m ockamtw.orchestrator ARGS}: C{twistd ockam-orchestrator}
without plugin discovery (how C{ockam orchestrator start} runs it).
"""

from .tap import run

run()
