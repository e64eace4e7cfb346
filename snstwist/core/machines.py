"""
What our typed Automat machines share: how to read which state one is in.

Typed Automat (L{automat.TypeMachineBuilder}) answers queries only through
inputs, and refuses an input that returns a value while another input's
transition runs; but the work of a transition often asks the machine where
it is (a new master's hello says "master").  So the state is read from the
machine's own record, here and nowhere else, instead of being copied into
an attribute that could disagree with it.
"""


def stateOf(machine):
    """
    The name of the state C{machine} (an instance built by a typed Automat
    machine) is in.  During a transition it is already the new state.
    """
    return machine.__automat_transitioner__._state.name
