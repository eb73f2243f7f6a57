"""Weight averaging (EMA) and gradient-norm clipping, shared by the trained diffusion methods.

AnoDDPM (EMA 0.9999 with warm-up, clip 1.0, as its official code) and DDAD (both off in the
paper; optional) use :class:`EMAAndClipping`; the EMA copy is a frozen
``torch.optim.swa_utils.AveragedModel`` (state-dict keys ``ema.module.*`` and
``ema.n_averaged``), used for sampling at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

MultiAvgFn = Callable[[list[Tensor], list[Tensor], Tensor], None]


def ema_with_warmup(decay: float) -> MultiAvgFn:
    """EMA update with warm-up: ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    The common DDPM warm-up (TensorFlow ``ExponentialMovingAverage(num_updates=...)``, used by
    Ho et al.'s code): without it, decay 0.9999 over a few hundred steps leaves the test-time
    weights ~96 % the initial ones. ``AveragedModel`` copies the weights at ``n = 0``.
    """

    def multi_avg_fn(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)  # one host sync per step, not one per tensor
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return multi_avg_fn


def ema_copy(net: nn.Module, decay: float, warmup: bool) -> AveragedModel | None:
    """A frozen EMA copy of ``net`` (DDP rejects trainable parameters without gradients).

    Args:
        net: the network averaged.
        decay: EMA decay; 0 disables the copy (returns None).
        warmup: use :func:`ema_with_warmup` (else a constant ``decay``).

    Raises:
        ValueError: ``decay`` outside ``[0, 1)``.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"ema_decay={decay}: expected 0 (off) or a decay in (0, 1)")
    if decay == 0:
        return None
    average = ema_with_warmup(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(net, multi_avg_fn=average).requires_grad_(False)


class EMAAndClipping:
    """Lightning hooks for an ``AnomalyModule``: EMA updates and gradient-norm clipping.

    The module sets ``self.ema`` (:func:`ema_copy`, or None), has ``grad_clip_norm`` in its
    hparams (0 = off; a trainer ``gradient_clip_val`` wins) and implements :meth:`ema_source`.
    List it before ``AnomalyModule`` in the bases.
    """

    ema: AveragedModel | None
    hparams: Any

    def ema_source(self) -> nn.Module | None:
        """The network the EMA follows after this batch; None skips the update."""
        raise NotImplementedError

    def averaged(self, net: nn.Module) -> nn.Module:
        """``net``'s EMA copy if there is one, else ``net`` (the weights used for sampling)."""
        return self.ema.module if self.ema is not None else net

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        source = self.ema_source() if self.ema is not None else None
        if source is not None:
            self.ema.update_parameters(source)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        clip = gradient_clip_val or self.hparams.grad_clip_norm
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
