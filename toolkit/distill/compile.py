"""``compile: off | auto | on``: torch.compile (inductor) for the model called in the training step, with an eager
fallback when compilation fails.

``auto`` compiles only on the device types where it was measured to gain (``AUTO_COMPILE``; the figures are in
``reports/pipeline/bench-pipeline.md``, rows "+ torch.compile"). ``on`` always tries. Either way a model is wrapped in
:class:`CompiledOrEager`: its first call is a probe that compiles the forward *and* backward graphs on the real input
(BatchNorm statistics and the random state are restored afterwards, so the probe changes nothing); if compilation
raises (no C++ compiler for inductor, an op it cannot lower, ...) one warning line is printed and training continues
eagerly with the same module. The wrapper exposes the module as ``.module`` (like DDP), so state_dict, feature taps
and evaluation use the plain module.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from toolkit import ToolkitError

COMPILE_MODES = ("off", "auto", "on")
AUTO_COMPILE: dict[str, bool] = {"cpu": False, "cuda": False}
"""What ``compile=auto`` does per device type: compile only where measured to gain. CPU: off, because on the 2-core
Zen 4 (AVX-512 BF16, no AMX) compiling each model took one to several minutes while the compiled bf16 step gained
too little to pay for it within a cpu-preset run (reports/pipeline/bench-pipeline.md, rows "+ torch.compile").
CUDA: off until measured on a GPU (``compile=on`` tries it)."""


def check_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ToolkitError(f"compile must be off, auto or on, got {mode!r}")
    return mode


def compile_wanted(mode: str, device: torch.device) -> bool:
    """Whether ``mode`` compiles on ``device`` (``auto``: ``AUTO_COMPILE`` for its type, else off)."""
    check_mode(mode)
    if mode == "auto":
        return AUTO_COMPILE.get(device.type, False)
    return mode == "on"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line[:200]}" if line else type(exc).__name__


class CompiledOrEager(nn.Module):
    """``module`` called through ``torch.compile(module)``; eager ``module`` once compilation has failed.

    ``fell_back`` tells which; ``reason`` holds the first line of the error. ``warn`` prints one line on the fallback
    (to stderr, prefixed with ``label``)."""

    def __init__(self, module: nn.Module, label: str = "model", warn: bool = True, **compile_kwargs):
        super().__init__()
        self.module = module
        self.label = label
        self.warn = warn
        self.fell_back = False
        self.reason: str | None = None
        self._probed = False
        try:
            compiled = torch.compile(module, **compile_kwargs)
        except Exception as exc:  # noqa: BLE001 - e.g. a torch build without dynamo
            compiled = None
            self._fall_back(exc)
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: parameters stay listed once

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _fall_back(self, exc: BaseException) -> None:
        self.fell_back, self.reason = True, _first_line(exc)
        object.__setattr__(self, "_compiled", None)
        if self.warn:
            print(f"warning: torch.compile of the {self.label} failed ({self.reason}); continuing eager", file=sys.stderr,
                  flush=True)

    def _probe(self, args, kwargs) -> None:
        """Compile forward and (when training) backward on the real input; restore buffers and RNG afterwards."""
        buffers = {k: v.detach().clone() for k, v in self.module.named_buffers()}
        devices = [t.device.index or 0 for t in args if isinstance(t, torch.Tensor) and t.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices):
            out = self._compiled(*args, **kwargs)
            wrt = [p for p in self.module.parameters() if p.requires_grad]
            wrt += [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]  # IG: gradients of the input
            if torch.is_grad_enabled() and wrt and isinstance(out, torch.Tensor) and out.requires_grad:
                torch.autograd.grad(out.float().sum(), wrt, allow_unused=True)
        with torch.no_grad():
            for k, v in self.module.named_buffers():
                v.copy_(buffers[k])

    def forward(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                if not self._probed:
                    self._probe(args, kwargs)
                    self._probed = True
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compile failure: eager gives the real error, if any
                self._fall_back(exc)
        return self.module(*args, **kwargs)


def maybe_compile(module: nn.Module, mode: str, device: torch.device, label: str = "model", **compile_kwargs) -> nn.Module:
    """``module`` itself when ``mode`` does not compile on ``device``, else a :class:`CompiledOrEager` around it."""
    if not compile_wanted(mode, device):
        return module
    return CompiledOrEager(module, label, **compile_kwargs)


__all__ = ["AUTO_COMPILE", "COMPILE_MODES", "CompiledOrEager", "check_mode", "compile_wanted", "maybe_compile"]
