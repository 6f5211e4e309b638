"""HookPoint: a named identity layer, the handle by which interp.py reads and replaces activations."""

import torch.nn as nn


class HookPoint(nn.Module):
    """An identity layer that gives the activation passing through it a name (TransformerLens).

    Register a forward hook on it to read the activation, or return a tensor from the hook to
    replace it; `interp.run_with_cache` / `interp.run_with_hooks` do both by name. Under
    torch.compile, as for any module, a hook added after compiling is not seen (torch's
    skip_nnmodule_hook_guards): hook the eager model.
    """

    @property
    def active(self):
        """True when a hook is registered here (the attention layer asks this of hook_pattern)."""
        return bool(self._forward_hooks or self._forward_pre_hooks
                    or self._backward_hooks or self._backward_pre_hooks)

    def forward(self, x):
        return x

    def __call__(self, x):
        # A model has about ten hook points per block, passed on every decoded token, and going
        # through nn.Module.__call__'s bookkeeping costs about three times this check. A module's
        # hooks live in its own dicts, so a hook point whose dicts are empty returns x directly.
        # (Global hooks, torch.nn.modules.module.register_module_forward_hook, are not seen here.)
        return super().__call__(x) if self.active else x
