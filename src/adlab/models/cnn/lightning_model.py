"""One-class CNN baseline: the seed's small classifier trained on normal vs synthetic anomalies.

The seed trains a supervised normal/abnormal classifier, which needs anomalous training images.
Here every training batch of normal images is paired with a copy corrupted by
:class:`adlab.synthesis.DraemAnomalySynthesizer` (class 1 wherever its mask is non-empty), so
batches are 50/50 and test anomalies are never seen. Score: the logit margin ``z_1 - z_0`` (the
log-odds of class 1; the softmax probability saturates to exactly 0 or 1 in float32, and ties
hurt AUROC); map: the anomaly-class activation map upsampled to the input size. See
``README.md`` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adlab import types as T
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.models.cnn.torch_model import CNNClassifier
from adlab.postprocess import PostProcessor
from adlab.synthesis import DraemAnomalySynthesizer
from adlab.types import AnomalyOutput


class CNNModule(AnomalyModule):
    """CNN classifier behind the one interface.

    Args:
        net: the classifier.
        synthesizer: anomaly simulator for the class-1 half of each batch (``p_normal: 0``).
        optimizer: partial optimizer (seed: Adam lr 1e-4).
        scheduler: optional partial LR scheduler.
        postprocess: map post-processing; the score rule is ``method`` (the logit margin).
        pixel_metrics: compute pixel metrics (from the coarse CAM).
    """

    default_postprocess = PostProcessor(score="method")
    fast_path_modules = ("net",)  # networks the FastPath callback converts / compiles

    def __init__(
        self,
        net: CNNClassifier,
        synthesizer: DraemAnomalySynthesizer,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, postprocess, pixel_metrics)
        ignore = ["net", "synthesizer", "optimizer", "scheduler", "postprocess"]
        self.save_hyperparameters(ignore=ignore)
        self.net = net
        self.synthesizer = synthesizer

    def training_batch(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Normal images (class 0) followed by their synthetic-anomaly copies.

        Args:
            images: ``(B, 3, H, W)`` normal training images in [0, 1].
            generator: Optional ``torch.Generator`` for the synthesizer.

        Returns:
            ``inputs (2B, 3, H, W)`` and ``labels (2B,)`` long: 0 for the originals, and for the
            copies 1 where the synthesizer's mask is non-empty (0 if it left a copy unchanged).
        """
        augmented, mask = self.synthesizer(images, generator)
        labels = torch.cat([torch.zeros_like(mask[:, 0, 0, 0]), mask.flatten(1).amax(dim=1)])
        return torch.cat([images, augmented]), labels.long()

    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor:
        """Cross entropy on a 50/50 batch of normal and synthetic-anomaly images."""
        inputs, labels = self.training_batch(batch[T.IMAGE])
        logits = self.net(inputs).logits
        loss = F.cross_entropy(logits, labels)
        self.log("train/accuracy", (logits.argmax(dim=1) == labels).float().mean())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Score ``(B,)``: logit margin ``z_1 - z_0`` = logit P(anomalous), monotone in the
        probability but never saturating; raw map ``(B, 1, h, w)``: the coarse CAM (the
        post-processor upsamples it bilinearly)."""
        out = self.net(images)
        return AnomalyOutput(out.cam, out.logits[:, 1] - out.logits[:, 0])
