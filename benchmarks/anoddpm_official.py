"""AnoDDPM test-time reconstruction, adlab vs the official code, on the same work (issue 16).

The work: reconstruct 16 images from lambda = 250 (noise to index 249 with simplex noise, then all
250 ancestral DDPM steps with simplex noise, x0 clipped), T = 1000 linear betas, the same UNet
(the official ``UNetModel`` defaults at ``--image-size``: channel multipliers (1, 2, 3, 4) at 32
px, 2 res blocks, attention at feature sizes 32/16/8, BigGAN up/down, ``--base-channels``).

- official: ``GaussianDiffusionModel.forward_backward(unet, x, see_whole_sequence=None,
  t_distance=250, denoise_fn="simplex")`` once per image (its ``detection.py`` runs batch 1), the
  OpenSimplex noise from its numba ``Simplex_CLASS`` (6 octaves, persistence 0.8, frequency 64);
- adlab: ``adlab.diffusion.reconstruct(x, 250, unet, scheduler, kind="ddpm")`` on one batch of
  16, with ``configs/model/anoddpm.yaml``'s ``SimplexNoise`` (the official octaves, persistence,
  frequency and std) and adlab's ``UNet`` holding the official network's weights (loaded by
  position, as ``tests/test_fidelity_official.py`` does), so both run the same network.

"Same outputs in distribution": the noise generators differ, so the reconstructions are compared
by the mean and std of the residual ``x - x_hat`` and of ``x_hat`` over the 16 images.

Needs a checkout of github.com/Julian-Wyatt/AnoDDPM (``--official DIR``, nothing vendored) and
``numba`` importable (e.g. ``pip install --target /tmp/official_deps numba llvmlite`` and
``PYTHONPATH=/tmp/official_deps``). The official ``GaussianDiffusion`` imports its evaluation
module, which imports scikit-image for an SSIM that reconstruction never calls: when
scikit-image is missing, a placeholder module that raises if called stands in for it.

Usage::

    PYTHONPATH=/tmp/official_deps OMP_NUM_THREADS=1 .venv/bin/python \\
        benchmarks/anoddpm_official.py --official /tmp/anoddpm_official --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from side_by_side import alternate, load_by_position, report, timed_row

ROOT = Path(__file__).resolve().parents[1]


def _import_official(path: Path) -> tuple[Any, Any, Any]:
    """``(GaussianDiffusionModel, get_beta_schedule, UNetModel)`` from the official checkout."""
    if importlib.util.find_spec("skimage") is None:
        metrics = types.ModuleType("skimage.metrics")

        def structural_similarity(*_: Any, **__: Any) -> None:
            raise RuntimeError("scikit-image placeholder: not used by reconstruction")

        metrics.structural_similarity = structural_similarity
        sys.modules["skimage"] = types.ModuleType("skimage")
        sys.modules["skimage.metrics"] = metrics
    sys.path.insert(0, str(path))  # the official code imports its modules by bare name
    from GaussianDiffusion import GaussianDiffusionModel, get_beta_schedule
    from UNet import UNetModel

    return GaussianDiffusionModel, get_beta_schedule, UNetModel


def _images(n: int, size: int) -> torch.Tensor:
    """``n`` synthetic ``weave`` training images ``(n, 3, size, size)`` in [-1, 1]."""
    import tempfile

    from adlab.data.io import read_image
    from adlab.data.synthetic import generate_category

    root = Path(tempfile.mkdtemp(prefix="anoddpm_side_"))
    generate_category(root, "weave", image_size=size, n_train=n, n_test_good=1, n_test_per_defect=1)
    files = sorted((root / "weave" / "train" / "good").glob("*.png"))[:n]
    return torch.stack([read_image(f) for f in files]) * 2 - 1


def _adlab_unet(official: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """adlab's UNet with the official network's weights, zipped by position."""
    from adlab.diffusion import UNet

    size = args.image_size
    attention = tuple(size // (size // int(r)) for r in args.attention.split(","))
    unet = UNet(
        in_channels=3, out_channels=3, model_channels=args.base_channels,
        channel_mult=(1, 2, 3, 4), num_res_blocks=args.num_res_blocks,
        attention_resolutions=attention, num_heads=2, num_head_channels=-1,
        dropout=0.0, norm_num_groups=32, use_scale_shift_norm=False, resblock_updown=True,
        learn_sigma=False, image_size=size, flip_sin_to_cos=False,
    )  # fmt: skip
    load_by_position(unet, official)
    return unet.eval()


def _scheduler() -> Any:
    """configs/model/anoddpm.yaml's scheduler (T = 1000, linear, fixed_large, simplex noise)."""
    from hydra.utils import instantiate

    cfg = OmegaConf.load(ROOT / "configs" / "model" / "anoddpm.yaml").noise_scheduler
    return instantiate(cfg)


def _summary(x: torch.Tensor, x_hat: torch.Tensor, seconds: float) -> dict[str, float]:
    return timed_row(seconds, len(x), residual=x - x_hat, x_hat=x_hat)


def run_official(diff: Any, unet: torch.nn.Module, x: torch.Tensor, t_start: int) -> dict:
    start = time.perf_counter()
    with torch.no_grad():
        out = [
            diff.forward_backward(
                unet,
                x[i : i + 1],
                see_whole_sequence=None,
                t_distance=t_start,
                denoise_fn="simplex",
            )  # fmt: skip
            for i in range(len(x))
        ]
    return _summary(x, torch.cat(out), time.perf_counter() - start)


def run_adlab(unet: torch.nn.Module, scheduler: Any, x: torch.Tensor, t_start: int) -> dict:
    from adlab.diffusion import reconstruct

    start = time.perf_counter()
    with torch.no_grad():
        out = reconstruct(x, t_start, unet, scheduler, kind="ddpm", generator=torch.Generator())
    return _summary(x, out, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--t-start", type=int, default=250)
    parser.add_argument("--num-res-blocks", type=int, default=2)
    parser.add_argument("--attention", default="32,16,8", help="official attention_resolutions")
    parser.add_argument("--compile", action="store_true", help="torch.compile adlab's UNet")
    parser.add_argument("--only", choices=("official", "adlab"), default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusion_cls, beta_schedule, unet_cls = _import_official(args.official.resolve())
    torch.manual_seed(0)
    official_unet = unet_cls(
        args.image_size,
        args.base_channels,
        n_heads=2,
        num_res_blocks=args.num_res_blocks,
        attention_resolutions=args.attention,
        in_channels=3,
    ).eval()  # BigGAN up/down, channel multipliers (1, 2, 3, 4) at 32 px: official defaults
    adlab_unet = _adlab_unet(official_unet, args)
    if args.compile:
        adlab_unet.compile()  # what callbacks.fast_path.compile=true does
    size = [args.image_size, args.image_size]
    diff = diffusion_cls(size, beta_schedule(1000, "linear"), img_channels=3, noise="simplex")
    scheduler, x = _scheduler(), _images(args.images, args.image_size)
    probe = torch.rand(1, 3, *size) * 2 - 1, torch.tensor([100])
    with torch.no_grad():
        same_net = (official_unet(*probe) - adlab_unet(*probe)).abs().max().item()
        diff.forward_backward(official_unet, x[:1], None, 2, "simplex")  # numba JIT warm-up
        if args.compile:  # compilation is timed separately
            start = time.perf_counter()
            adlab_unet(x, torch.full((len(x),), 100))
            print("adlab compile seconds", time.perf_counter() - start, flush=True)

    def run(side: str, _: int) -> dict:
        if side == "official":
            return run_official(diff, official_unet, x, args.t_start)
        return run_adlab(adlab_unet, scheduler, x, args.t_start)

    report(args, alternate(run, args.rounds, args.only), {"unet_max_abs_diff": same_net})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
