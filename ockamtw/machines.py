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


def indexed(machine):
    """
    Give a built machine (C{TypeMachineBuilder.build()}) a table lookup of
    its transitions, and return it.

    automat finds the transition for a state and an input by comparing the
    pair with each transition in turn (its dataclass states compare in
    Python), about twenty comparisons per input for the portal's machine;
    a portal's stream takes five inputs to open and close.  The table is
    made from the machine's own transitions once it is built, keyed by the
    state object (automat's states are made once per builder) and the
    input's name; a pair not in it (no such transition) goes to automat as
    before, which raises its own error.  A version of automat without the
    attributes used here keeps its own lookup: the result is the same,
    only slower (C{tests.test_machines} says which one runs).
    """
    automaton = getattr(machine, "__automat_automaton__", None)
    transitions = getattr(automaton, "allTransitions", None)
    if transitions is None:
        return machine
    scan = automaton.outputForInput
    # Keyed by id: the automaton holds its states as long as the table
    # lives, so an id stays theirs.
    table = {(id(old), symbol): (new, tuple(outputs)) for old, symbol, new, outputs in transitions()}

    def outputForInput(state, symbol):
        found = table.get((id(state), symbol))
        if found is None:
            return scan(state, symbol)
        return found[0], list(found[1])

    outputForInput.scan = scan
    automaton.outputForInput = outputForInput
    return machine
