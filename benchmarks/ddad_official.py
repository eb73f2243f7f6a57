"""DDAD's test loop, adlab vs the official code, on the same work (issue 16).

The work: detect on ``--images`` (16) synthetic ``weave`` test images (good and defective) at
``--image-size`` (64) px with one network pair holding the same weights on both sides:

- UNet: the official ``UNetModel(image_size, --base-channels, n_heads=4, dropout=0)`` (its DDAD
  build, ``main.py``, with a smaller base width: 32 instead of 64), channel multipliers from its
  own size table, 2 res blocks, attention at 32/16/8, BigGAN up/down; adlab's ``UNet`` gets its
  weights by position (as ``tests/test_fidelity_official.py``). The official init zeroes the
  output convolutions (eps = 0 exactly), so every all-zero parameter (those, and the GroupNorm
  biases) is refilled with N(0, 0.02^2) first, otherwise the reconstruction would not depend
  on the network;
- feature extractor: the official config's ``wide_resnet101_2`` built by its ``resnet.py`` with
  ``pretrained=False`` (no download, nothing patched; its domain-adapted checkpoint is not
  loaded), random init; adlab's timm ``FeatureExtractor`` of the same name (layer1-3) gets its
  state dict by key (``layer4`` and ``fc`` have no counterpart and are left out).

The settings are the official ``config.yaml``'s: T' = 250, skip 25 (10 UNet evaluations), eta 1,
w (``--w``, default the config's 2), v 1, test batch 16 (``data.test_batch_size``).

- official: per batch, what ``DDAD.__call__`` does: ``Reconstruction(unet, config)(x, x, w)[-1]``
  and ``heat_map(x0, x, FE, config)`` (pixel + feature distance with the batch-wide ratio,
  kornia Gaussian sigma 4), score = map max; CPU, no ``DataParallel`` wrappers, no 224 crop (at
  64 px);
- adlab: ``DDADModule`` instantiated from ``configs/model/ddad.yaml`` with the same t_start, step
  count, eta, w, v and ``ratio_mode=batch`` (the official ratio), ``evaluate_images`` per batch
  (what ``test_step`` calls: ``predict_anomaly`` then the post-processor, sigma 4, score max),
  batches of ``dataset.eval_batch_size`` from ``configs/experiment/ddad_mvtec.yaml`` (16), with
  what ``callbacks.fast_path`` turns on by default for DDAD (channels_last; ``--channels-last
  false`` turns it off).

Known differences in the work itself: the official code noises to index 250 and evaluates the
UNet at 225, 200, ..., 0; adlab noises to 249 and evaluates at 249, 224, ..., 24 (same count;
``src/adlab/models/ddad/README.md``). adlab's test noise is one seeded draw repeated over the
batch, the official one i.i.d. per image; the official backbone also runs ``layer4``.

"Same outputs in distribution": mean and std of the smoothed maps, of the scores and of the
reconstructions (in [0, 1], clamped as adlab returns them). ``agreement``: both sides once more
on the first 4 images with eta = 0 and the same forward noise (the sampler is then
deterministic), max abs difference of reconstructions and of maps; it is not zero because of
the step indices above.

Needs a checkout of github.com/arimousa/DDAD (``--official DIR``, nothing vendored; it imports
kornia and matplotlib, both in adlab's venv).

Usage::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/ddad_official.py \\
        --official /tmp/ddad_official --rounds 2 --json-out ddad_official.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from side_by_side import alternate, load_by_position, report, timed_row
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = ("config.yaml", "reconstruction.py", "anomaly_map.py", "unet.py", "resnet.py")
AGREEMENT_IMAGES = 4
ZERO_INIT_STD = 0.02


def _import_official(path: Path) -> types.SimpleNamespace:
    """The official ``Reconstruction``, ``heat_map``, ``UNetModel`` and ``resnet`` module."""
    missing = [f for f in OFFICIAL_FILES if not (path / f).is_file()]
    if missing:
        raise SystemExit(
            f"--official {path}: expected a checkout of github.com/arimousa/DDAD with "
            f"{', '.join(OFFICIAL_FILES)}; missing {', '.join(missing)}"
        )
    sys.path.insert(0, str(path))  # the official code imports its modules by bare name
    import resnet
    from anomaly_map import heat_map
    from reconstruction import Reconstruction
    from unet import UNetModel

    return types.SimpleNamespace(
        Reconstruction=Reconstruction, heat_map=heat_map, UNetModel=UNetModel, resnet=resnet
    )


def _official_config(path: Path, args: argparse.Namespace, eta: float | None = None) -> DictConfig:
    """The checkout's ``config.yaml`` on the CPU at ``--image-size``, with ``--w`` (and eta)."""
    cfg = OmegaConf.load(path / "config.yaml")
    cfg.data.image_size, cfg.model.device = args.image_size, "cpu"
    if args.w is not None:
        cfg.model.w = args.w
    if eta is not None:
        cfg.model.eta = eta
    return cfg


def _images(n: int, size: int) -> Tensor:
    """``n`` synthetic ``weave`` test images ``(n, 3, size, size)`` in [0, 1], evenly spread
    over the good and defect folders."""
    from adlab.data.io import read_image
    from adlab.data.synthetic import generate_category

    root = Path(tempfile.mkdtemp(prefix="ddad_side_"))
    generate_category(root, "weave", image_size=size, n_train=1, n_test_good=n, n_test_per_defect=n)
    files = sorted((root / "weave" / "test").glob("*/*.png"))
    return torch.stack([read_image(files[i * len(files) // n]) for i in range(n)])


def _official_unet(official: types.SimpleNamespace, args: argparse.Namespace) -> nn.Module:
    """The official DDAD UNet at ``--base-channels``, zero-initialised parameters refilled."""
    torch.manual_seed(0)
    unet = official.UNetModel(
        args.image_size, args.base_channels, dropout=0.0, n_heads=4, in_channels=3
    )
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, ZERO_INIT_STD)
    return unet.eval()


def _adlab_module(
    official_unet: nn.Module, official_fe: nn.Module, cfg: DictConfig, args: argparse.Namespace
) -> Any:
    """``DDADModule`` from ``configs/model/ddad.yaml`` at the official settings and weights."""
    model = OmegaConf.load(ROOT / "configs" / "model" / "ddad.yaml")
    model.unet.update(
        model_channels=args.base_channels,
        channel_mult=list(official_unet.channel_mult),
        image_size=args.image_size,
    )
    model.feature_extractor.update(
        name=cfg.model.feature_extractor, weights=None, allow_random_init=True
    )
    model.update(
        t_start=cfg.model.test_trajectoy_steps,
        num_steps=len(range(0, cfg.model.test_trajectoy_steps, cfg.model.skip)),
        eta=cfg.model.eta,
        w=cfg.model.w,
        v=cfg.model.v,
        ratio_mode="batch",
    )
    module = instantiate(model)
    load_by_position(module.unet, official_unet)
    fe = module.feature_extractor.model
    fe.load_state_dict({k: v for k, v in official_fe.state_dict().items() if k in fe.state_dict()})
    return module.eval()


def _fast_path(module: Any, channels_last: str) -> None:
    """What ``callbacks.fast_path`` does to the network in a CPU test run (compile off, as its
    default; host memory reuse off: it is process-wide and would speed the official side too)."""
    from adlab.callbacks.fast_path import FastPath

    value: bool | str = {"true": True, "false": False}.get(channels_last, channels_last)
    trainer = types.SimpleNamespace(
        strategy=types.SimpleNamespace(root_device=torch.device("cpu")), precision="32-true"
    )
    FastPath(channels_last=value, compile=False, reuse_host_memory=False).setup(
        trainer, module, "test"
    )


def _imagenet(x: Tensor) -> Tensor:
    """[-1, 1] -> ImageNet-normalised, the official ``feature_distance`` transform."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def _same_networks(
    official_unet: nn.Module, official_fe: nn.Module, module: Any, size: int
) -> dict[str, float]:
    """Max abs differences of one UNet forward and of the layer1-3 features on a probe."""
    torch.manual_seed(1)
    x, t = torch.rand(2, 3, size, size) * 2 - 1, torch.tensor([100, 200])
    with torch.no_grad():
        unet = (official_unet(x, t.float()) - module.unet(x, t)).abs().max().item()
        theirs, ours = official_fe(_imagenet(x)), module.feature_extractor((x + 1) / 2)
        fe = max((a - b).abs().max().item() for a, b in zip(theirs, ours, strict=True))
    return {"unet_max_abs_diff": unet, "features_max_abs_diff": fe}


def _agreement(
    official: types.SimpleNamespace,
    unet: nn.Module,
    fe: nn.Module,
    cfg0: DictConfig,
    module: Any,
    x: Tensor,
) -> dict[str, float]:
    """Both sides with eta = 0 and one forward noise z on ``x`` (one batch): max abs
    differences of the reconstructions in [0, 1] and of the maps, and the maps' max."""
    torch.manual_seed(2)
    z = torch.randn_like(x)
    torch.manual_seed(2)  # the official sampler's first draw is its forward noise: z again
    theirs = official_detect(official, unet, fe, cfg0, x)
    scheduler, eta = module.noise_scheduler, module.hparams.eta
    shared_noise = scheduler.noise_fn
    scheduler.noise_fn, module.hparams.eta = (lambda like, t=None, generator=None: z), 0.0
    try:
        ours = adlab_detect(module, x, len(x))
    finally:
        scheduler.noise_fn, module.hparams.eta = shared_noise, eta
    return {
        "images": len(x),
        "x_hat_max_abs_diff": (theirs[2] - ours[2]).abs().max().item(),
        "map_max_abs_diff": (theirs[0] - ours[0]).abs().max().item(),
        "map_max": theirs[0].max().item(),
    }


def _outputs(maps: Tensor, scores: Tensor, x_hat: Tensor, seconds: float) -> dict[str, float]:
    return timed_row(seconds, len(maps), map=maps, score=scores, x_hat=x_hat)


def official_detect(
    official: types.SimpleNamespace, unet: nn.Module, fe: nn.Module, cfg: DictConfig, x: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The official test loop's work on ``x`` ``(N, 3, H, W)`` in [0, 1]: maps, scores and
    reconstructions in [0, 1], in batches of ``data.test_batch_size``."""
    reconstruction = official.Reconstruction(unet, cfg)
    maps, x_hats = [], []
    with torch.no_grad():
        for batch in (x * 2 - 1).split(cfg.data.test_batch_size):
            x0 = reconstruction(batch, batch, cfg.model.w)[-1]
            maps.append(official.heat_map(x0, batch, fe, cfg))
            x_hats.append(((x0 + 1) / 2).clamp(0, 1))
    maps_ = torch.cat(maps)
    return maps_, maps_.flatten(1).amax(dim=1), torch.cat(x_hats)


def adlab_detect(module: Any, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """adlab's test step work on ``x`` ``(N, 3, H, W)`` in [0, 1]: maps, scores, x_hat."""
    with torch.no_grad():
        outs = [module.evaluate_images(batch) for batch in x.split(batch_size)]
    maps, scores, x_hat = (torch.cat(parts) for parts in zip(*outs, strict=True))
    return maps, scores, x_hat


def timed(run: Callable[[], tuple[Tensor, Tensor, Tensor]]) -> dict[str, float]:
    """Wall seconds of ``run()`` and its output statistics."""
    start = time.perf_counter()
    maps, scores, x_hat = run()
    return _outputs(maps, scores, x_hat, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--w", type=float, default=None, help="default: the official config's")
    parser.add_argument("--channels-last", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--only", choices=("official", "adlab"), default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.official.resolve()
    official = _import_official(path)
    cfg = _official_config(path, args)
    unet = _official_unet(official, args)
    fe = getattr(official.resnet, cfg.model.feature_extractor)(pretrained=False).eval()
    module = _adlab_module(unet, fe, cfg, args)
    checks = _same_networks(unet, fe, module, args.image_size)
    _fast_path(module, args.channels_last)
    x = _images(args.images, args.image_size)
    agreement = _agreement(
        official, unet, fe, _official_config(path, args, eta=0.0), module, x[:AGREEMENT_IMAGES]
    )
    print("checks", json.dumps(checks), "agreement", json.dumps(agreement), flush=True)
    eval_batch = OmegaConf.load(ROOT / "configs" / "experiment" / "ddad_mvtec.yaml")
    batch_size = int(eval_batch.dataset.eval_batch_size)

    def run(side: str, round_: int) -> dict[str, float]:
        torch.manual_seed(round_)  # the official sampler's i.i.d. noise
        if side == "official":
            return timed(lambda: official_detect(official, unet, fe, cfg, x))
        return timed(lambda: adlab_detect(module, x, batch_size))

    settings = {
        "t_start": cfg.model.test_trajectoy_steps,
        "skip": cfg.model.skip,
        "eta": cfg.model.eta,
        "w": cfg.model.w,
        "v": cfg.model.v,
        "feature_extractor": cfg.model.feature_extractor,
        "official_batch": cfg.data.test_batch_size,
        "adlab_batch": batch_size,
    }
    runs = alternate(run, args.rounds, args.only)
    report(args, runs, {"settings": settings, **checks, "agreement_eta0": agreement})


if __name__ == "__main__":
    main()
