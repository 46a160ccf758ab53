"""Which forward hooks on a module are the library's own (the tensor-parallel plan's input / output
conversions) and which were added by someone else (taps, the user): only the latter change what a
forward does in ways a compiled graph would not reproduce.

`parallelize` registers the hooks its plan installs with `mark_own_hooks`; `foreign_hooks` lists every
other one. Kept per module in a weak dictionary, so a module's entry goes with it.
"""

from __future__ import annotations

import weakref

from torch import nn

_OWN: weakref.WeakKeyDictionary[nn.Module, frozenset[int]] = weakref.WeakKeyDictionary()


def hook_ids(module: nn.Module) -> frozenset[int]:
    """The ids of every forward (pre-)hook on `module` itself."""
    return frozenset(module._forward_pre_hooks) | frozenset(module._forward_hooks)


def mark_own_hooks(module: nn.Module, ids: frozenset[int]) -> None:
    """Record `ids` as hooks the library installed on `module`."""
    _OWN[module] = _OWN.get(module, frozenset()) | ids


def foreign_hooks(module: nn.Module) -> frozenset[int]:
    """The hooks on `module` itself that the library did not install."""
    return hook_ids(module) - _OWN.get(module, frozenset())
