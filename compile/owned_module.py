"""An IRModule handed on whole: the receiver holds the only reference to it.

A Relax module holds its weights as constants, and an IRModule is immutable: a pass that rewrites
the weights (packing, bf16 or int8 conversion) makes a new module beside the old one. Whoever
still holds the old module keeps its weights alive, and a Python argument is held by the caller's
frame until the call returns. A build that passes the imported module down a chain of calls
therefore keeps the imported weights for the whole pipeline, next to every rewritten copy.

Wrapping the module in ``OwnedModule`` and dropping the caller's reference lets the callee
``take`` it: from then on only the callee's local variable holds it, and rebinding that variable
to the next stage's result frees the previous stage's weights.
"""

from __future__ import annotations


class OwnedModule:
    """A module to be taken exactly once."""

    def __init__(self, mod) -> None:
        self._mod = mod

    def take(self):
        mod, self._mod = self._mod, None
        if mod is None:
            raise RuntimeError("this OwnedModule was already taken")
        return mod


def take_module(mod_or_owned):
    """The module itself, taken out of an ``OwnedModule`` where it is one."""
    return mod_or_owned.take() if isinstance(mod_or_owned, OwnedModule) else mod_or_owned


__all__ = ["OwnedModule", "take_module"]
