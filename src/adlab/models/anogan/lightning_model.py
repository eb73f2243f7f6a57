"""AnoGAN (Schlegl et al., IPMI 2017): a DCGAN of normal images and test-time latent search.

Training: non-saturating GAN with BCE-with-logits, one discriminator and one generator step per
batch (Lightning manual optimisation, two optimizers from the config). Test: for each image,
Adam on z (networks frozen) minimises the residual + discrimination loss; anomaly map = channel
mean of ``|x - G(z)|``, score = the final mapping loss A(x). See ``README.md`` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adlab import types as T
from adlab.models.anogan.torch_model import Discriminator, Generator, latent_search
from adlab.models.base import AnomalyModule, OptimizerFactory
from adlab.postprocess import PostProcessor, resize_map
from adlab.types import AnomalyOutput


class AnoGANModule(AnomalyModule):
    """AnoGAN behind the one interface.

    Images are resized to the networks' ``image_size`` and mapped to [-1, 1] internally; the
    post-processor resizes the raw maps back to the input size before smoothing.

    Args:
        generator: DCGAN generator.
        discriminator: DCGAN discriminator (logits, features for L_D).
        optimizer_g: partial optimizer of the generator (DCGAN: Adam 2e-4, betas (0.5, 0.999)).
        optimizer_d: partial optimizer of the discriminator.
        search_steps: Gamma, Adam steps of the latent search (paper: 500).
        search_lr: Adam learning rate of the latent search.
        lam: lambda, weight of the discrimination loss (paper: 0.1).
        eval_seed: seed of the initial latent codes, so evaluations are repeatable.
        postprocess: smoothing of the residual map in input pixels (spec: 4) and the score
            rule: ``method`` (A(x), the final mapping loss, eq. 4; default) or a map rule.
        pixel_metrics: compute pixel metrics.
    """

    default_postprocess = PostProcessor(sigma=4.0, score="method")
    fast_path_modules = ("generator", "discriminator")  # networks FastPath converts / compiles

    export_blocker = (
        "its score is a test-time latent search (search_steps Adam steps with gradients through "
        "the generator), an optimisation loop that ONNX inference graphs cannot express"
    )

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        search_steps: int = 500,
        search_lr: float = 0.01,
        lam: float = 0.1,
        eval_seed: int = 0,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(None, None, postprocess, pixel_metrics)
        if (generator.image_size, generator.out_channels) != (
            discriminator.image_size,
            discriminator.in_channels,
        ):
            raise ValueError("generator and discriminator need the same image_size and channels")
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d", "postprocess"]
        )
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.optimizer_g = optimizer_g
        self.optimizer_d = optimizer_d

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """``[generator optimizer, discriminator optimizer]`` from the two partial configs."""
        return [
            self.optimizer_g(self.generator.parameters()),
            self.optimizer_d(self.discriminator.parameters()),
        ]

    def _to_net(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` in [-1, 1] at the networks' size S."""
        size = self.generator.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return images * 2 - 1

    def training_step(self, batch: T.Batch, batch_idx: int) -> None:
        """One D step, then one non-saturating G step (Goodfellow et al. 2014, sec. 3)."""
        x = self._to_net(batch[T.IMAGE])
        opt_g, opt_d = self.optimizers()
        z = torch.randn(x.shape[0], self.generator.latent_dim, device=x.device)
        fake = self.generator(z)
        bce = F.binary_cross_entropy_with_logits

        self.toggle_optimizer(opt_d)
        logits_real, logits_fake = self.discriminator(x), self.discriminator(fake.detach())
        loss_d = bce(logits_real, torch.ones_like(logits_real)) + bce(
            logits_fake, torch.zeros_like(logits_fake)
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        logits_g = self.discriminator(fake)
        loss_g = bce(logits_g, torch.ones_like(logits_g))
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log("train/loss_d", loss_d, prog_bar=True)
        self.log("train/loss_g", loss_g, prog_bar=True)
        self.log("train/d_real", logits_real.sigmoid().mean())
        self.log("train/d_fake", logits_fake.sigmoid().mean())

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Latent search per image; raw map ``(B, 1, S, S)`` = channel-mean ``|x - G(z)|`` at the
        networks' size S, score ``(B,)`` = the final mapping loss A(x).

        Lightning evaluates under ``torch.inference_mode()``, where nothing can be
        differentiated, and tensors created there (the batch) cannot be saved for backward. The
        search therefore runs under ``inference_mode(False)`` + ``enable_grad()`` on a clone of
        the batch made inside that block, so no trainer setting is needed.
        """
        with torch.inference_mode(False), torch.enable_grad():
            x = self._to_net(images.clone())
            generator = torch.Generator(device=x.device).manual_seed(self.hparams.eval_seed)
            z0 = torch.randn(
                x.shape[0], self.generator.latent_dim, generator=generator, device=x.device
            )
            mapping = latent_search(
                self.generator,
                self.discriminator,
                x,
                z0,
                self.hparams.search_steps,
                self.hparams.search_lr,
                self.hparams.lam,
            )
        residual = (x - mapping.x_hat).abs().mean(dim=1, keepdim=True).detach()
        reconstruction = resize_map((mapping.x_hat.detach() + 1) / 2, tuple(images.shape[-2:]))
        return AnomalyOutput(residual, mapping.losses[-1].detach(), reconstruction)
