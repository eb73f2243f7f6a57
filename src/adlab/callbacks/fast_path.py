"""Fast-path options in one Lightning callback: channels_last, compile, host memory reuse, TF32,
fused optimizers.

Each method names its networks in a class attribute ``fast_path_modules`` (attribute names on the
module, e.g. ``("net",)``); ``fast_path_auto`` lists the options measured to pay off on CPU
(``benchmarks/speed.py``, ``benchmarks/RESULTS.md``; ``AnomalyModule``'s default, channels_last,
holds for every method), and ``auto`` turns exactly those on.
The conversions happen in ``setup``, before Lightning moves the module and builds the optimizers:

- ``channels_last``: ``module.to(memory_format=torch.channels_last)``; convolutions then run in
  NHWC (oneDNN / cuDNN) and keep that layout through the network.
- ``compile``: ``nn.Module.compile()`` in place, so parameter names and checkpoints are unchanged;
  the same compiled network serves the training step and the test-time sampler.
- ``reuse_host_memory``: glibc ``malloc`` keeps freed blocks for the next step instead of giving
  them back to the kernel (:mod:`adlab.host_memory`), from ``setup`` to ``teardown``; ``auto``:
  wherever the process runs on glibc.
- ``tf32`` (CUDA only): TF32 matmuls and convolutions (``torch.backends.*.allow_tf32``).
- ``fused_optimizer`` (CUDA only): the method's partial optimizer gets ``fused=True`` when its
  class accepts it (Adam, AdamW, SGD).

Mixed precision is ``trainer.precision`` (``bf16-mixed`` / ``16-mixed``, GPU only): this callback
refuses bf16 on a CPU, where it ran at 0.3 GFLOP/s (issue 16).
"""

from __future__ import annotations

import functools
import inspect
import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from adlab import host_memory

log = logging.getLogger(__name__)

AUTO = "auto"
OPTIONS = ("channels_last", "compile")


def _as_option(key: str, value: bool | str) -> bool | str:
    if value not in (True, False, AUTO):
        raise ValueError(f"callbacks.fast_path.{key} must be true, false or auto, got {value!r}")
    return value


class FastPath(Callback):
    """Apply the fast-path options to ``pl_module.fast_path_modules``.

    Args:
        channels_last: true, false or ``auto`` (on where the method lists it in
            ``fast_path_auto``).
        compile: true, false or ``auto``, as ``channels_last``.
        compile_mode: ``torch.compile`` mode (None: default; ``max-autotune`` on a GPU).
        reuse_host_memory: true, false or ``auto`` (on where the C library is glibc); true off
            glibc raises in ``setup``.
        tf32: enable TF32 on CUDA.
        fused_optimizer: ``fused=True`` for the partial optimizer on CUDA.
    """

    def __init__(
        self,
        channels_last: bool | str = AUTO,
        compile: bool | str = AUTO,
        compile_mode: str | None = None,
        reuse_host_memory: bool | str = AUTO,
        tf32: bool = True,
        fused_optimizer: bool = True,
    ) -> None:
        self.options = {
            "channels_last": _as_option("channels_last", channels_last),
            "compile": _as_option("compile", compile),
        }
        self.compile_mode = compile_mode
        self.reuse_host_memory = _as_option("reuse_host_memory", reuse_host_memory)
        self._keeping_memory = False
        self.tf32, self.fused_optimizer = tf32, fused_optimizer
        self._done: set[int] = set()

    def enabled(self, option: str, pl_module: L.LightningModule) -> bool:
        """Whether ``option`` (one of :data:`OPTIONS`) applies to ``pl_module``."""
        value = self.options[option]
        if value == AUTO:
            return option in getattr(pl_module, "fast_path_auto", ())
        return bool(value)

    @staticmethod
    def modules(pl_module: L.LightningModule) -> list[nn.Module]:
        """The networks named by ``fast_path_modules`` (absent optional ones, e.g. an EMA copy
        that is None, are skipped)."""
        names = getattr(pl_module, "fast_path_modules", ())
        found = [getattr(pl_module, name, None) for name in names]
        for name, module in zip(names, found, strict=True):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(
                    f"{type(pl_module).__name__}.fast_path_modules names {name!r}, which is a "
                    f"{type(module).__name__}, not an nn.Module"
                )
        return [m for m in found if m is not None]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        if device.type == "cpu" and "bf16" in str(trainer.precision):
            raise ValueError(
                f"trainer.precision={trainer.precision} on a CPU: bf16 convolutions ran at "
                "0.3 GFLOP/s on this project's CPUs; use 32-true (mixed precision is a GPU option)"
            )
        if self.reuse_host_memory is True or (
            self.reuse_host_memory == AUTO and host_memory.available()
        ):
            host_memory.keep_freed_memory(True)
            self._keeping_memory = True
        if device.type == "cuda" and self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if device.type == "cuda" and self.fused_optimizer:
            self._fuse_optimizer(pl_module)
        fresh = [m for m in self.modules(pl_module) if id(m) not in self._done]
        for module in fresh:
            if self.enabled("channels_last", pl_module):
                module.to(memory_format=torch.channels_last)
            if self.enabled("compile", pl_module):
                module.compile(mode=self.compile_mode)
            self._done.add(id(module))
        if not fresh:  # fit then test: said once, when the networks were converted
            return
        log.info(
            "fast path for %s: %s",
            type(pl_module).__name__,
            {o: self.enabled(o, pl_module) for o in OPTIONS}
            | {"reuse_host_memory": self._keeping_memory},
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._keeping_memory:  # glibc's limits again: the heap may shrink after the run
            host_memory.keep_freed_memory(False)
            self._keeping_memory = False

    @staticmethod
    def _fuse_optimizer(pl_module: L.LightningModule) -> None:
        """``fused=True`` on the base class's partial optimizer when its class accepts it."""
        factory = getattr(pl_module, "optimizer_factory", None)
        target = getattr(factory, "func", None)
        if target is None or "fused" not in inspect.signature(target).parameters:
            return
        if "fused" not in factory.keywords:
            pl_module.optimizer_factory = functools.partial(factory, fused=True)
