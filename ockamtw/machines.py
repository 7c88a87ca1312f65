"""
How ockamtw declares its automat state machines (the relay client, the
secure channel end, the portal worker; see each module's table).

Each machine's core object keeps the name of its current state in a plain
attribute (the fast paths and the control API read it), and each
transition names the core's method it runs, so that test doubles supply
their own.
"""

from __future__ import annotations

from typing import Optional


def transitions(attribute: str):
    """
    A function C{on(old, input, new, output=None)} declaring that, in state
    C{old}, C{input} leads to state C{new}: the core's C{attribute} becomes
    C{new}'s name, then its method named C{output} (if any) runs with the
    input's arguments.
    """

    def on(old, input, new, output: Optional[str] = None) -> None:
        name = new.name

        def transition(machine, core, *args) -> None:
            setattr(core, attribute, name)
            if output is not None:
                getattr(core, output)(*args)

        transition.__name__ = output or "nothing"
        (old.upon(input).loop() if old is new else old.upon(input).to(new))(transition)

    return on
