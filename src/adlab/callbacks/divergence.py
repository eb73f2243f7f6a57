"""Stop a diverging fit at the step where the loss stops being finite."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _losses(outputs: Any, trainer: Trainer) -> dict[str, float]:
    """The step's loss (``training_step``'s return) and the ``train/*`` values logged this step."""
    found: dict[str, float] = {}
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if torch.is_tensor(loss) and loss.numel() == 1:
        found["loss"] = float(loss)
    for name, value in trainer.callback_metrics.items():
        if name.startswith("train/") and torch.is_tensor(value) and value.numel() == 1:
            found[name] = float(value)
    return found


class DivergenceGuard(Callback):
    """Raise :class:`DivergenceError` naming the step and the loss as soon as it is not finite.

    Checks the value ``training_step`` returned and every scalar logged under ``train/`` (manual
    optimisation, e.g. AnoGAN, returns nothing). Steps count from 1 (``trainer.global_step``
    after the update). Added by the CLI to every fit, so a diverging
    run ends at the step it diverges instead of training on and failing at test time.
    """

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bad = {k: v for k, v in _losses(outputs, trainer).items() if not math.isfinite(v)}
        if bad:
            values = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise DivergenceError(
                f"training diverged at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}): {values}. Lower the learning "
                "rate, enable gradient clipping, or check the inputs; the last good checkpoint "
                "(if any) is under checkpoints/"
            )
