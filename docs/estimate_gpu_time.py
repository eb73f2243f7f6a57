"""GPU-time estimates of the paper recipes (the tables in ``docs/reproduction.md``).

FLOPs per 256 px image are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (no weights are downloaded or computed); a training step costs 3x the forward FLOPs; the
total is divided by an assumed effective throughput (``--tflops``, default 100: about 20 % of an
H100 / H200 SXM's dense TF32 peak). Usage: ``python docs/estimate_gpu_time.py [--tflops 100]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from adlab.models.dmad.torch_model import CompressionBottleneck, StudentDecoder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# MVTec AD (Bergmann et al. 2019): normal training images / test images per category.
MVTEC = {
    "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117),
    "grid": (264, 78), "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115),
    "pill": (267, 167), "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42),
    "transistor": (213, 100), "wood": (247, 79), "zipper": (240, 151),
}  # fmt: skip


def forward_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def network_flops() -> dict[str, int]:
    """Forward FLOPs of one 256 px image through each recipe's networks."""
    x = torch.zeros(1, 3, 256, 256, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    flops = {}
    with initialize_config_dir(str(CONFIGS), version_base="1.3"), torch.device("meta"):
        draem = instantiate(compose("train.yaml", ["experiment=draem_mvtec"]).model.net)
        flops["draem"] = forward_flops(lambda: draem(x))
        for name in ("ddad", "anoddpm"):
            unet = instantiate(compose("train.yaml", [f"experiment={name}_mvtec"]).model.unet)
            flops[f"{name}_unet"] = forward_flops(lambda unet=unet: unet(x, t))
        for name in ("wide_resnet101_2", "wide_resnet50_2"):
            net = timm.create_model(name, features_only=True, out_indices=(1, 2, 3))
            flops[name] = forward_flops(lambda net=net: net(x))
        dmad = compose("train.yaml", ["experiment=dmad_mvtec"]).model.model
        offset = instantiate(dmad.offset_net)
        flops["dmad_offset"] = forward_flops(lambda: offset(x))
        channels, strides = [256, 512, 1024], [4, 8, 16]  # WRN-50-2 layer1-3 at 256 px
        bottleneck = CompressionBottleneck(
            channels, strides, dmad.reduce_channels, dmad.num_codes, dmad.vq_beta, dmad.use_vq,
            dmad.bottleneck_blocks, dmad.bottleneck_width,
        )  # fmt: skip
        decoder = StudentDecoder(
            channels, strides, bottleneck.out_channels, tuple(dmad.decoder_blocks),
            dmad.decoder_width_ratio,
        )  # fmt: skip
        sizes = zip(channels, strides, strict=True)
        feats = [torch.zeros(1, c, 256 // s, 256 // s) for c, s in sizes]
        flops["dmad_student"] = forward_flops(lambda: decoder(bottleneck(feats).embedding))
    return flops


def category_seconds(f: dict[str, int], train: int, test: int, ddad: tuple, tflops: float) -> dict:
    """Seconds per method for one category; ``ddad`` = (diffusion epochs, DA epochs)."""
    epochs, da_epochs = ddad
    ddad_test = 10 * f["ddad_unet"] + 2 * f["wide_resnet101_2"]
    da_pair = 10 * f["ddad_unet"] + 8 * f["wide_resnet101_2"]  # reconstruction, phi fwd+bwd, phibar
    dmad_step = 3 * (f["dmad_offset"] + f["wide_resnet50_2"] + f["dmad_student"])
    total = {
        "draem": 700 * train * 3 * f["draem"] + test * f["draem"],
        "ddad": epochs * (train // 32 * 32) * 3 * f["ddad_unet"]
        + da_epochs * (train // 16 * 8) * da_pair
        + (test + 32) * ddad_test,
        "dmad": 400 * train * dmad_step,
        "anoddpm": 300_000 * 3 * f["anoddpm_unet"] + test * 250 * f["anoddpm_unet"],
    }
    return {k: v / (tflops * 1e12) for k, v in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=100.0, help="effective TFLOP/s")
    args = parser.parse_args()
    flops = network_flops()
    for name, value in flops.items():
        print(f"{name}: {value / 1e9:.1f} GFLOP per image")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        table = compose("train.yaml", ["experiment=ddad_mvtec"]).paper
    print("| category | DRAEM | DDAD | DMAD | AnoDDPM |\n|---|---:|---:|---:|---:|")
    for category, (train, test) in MVTEC.items():
        ddad = (table[category].epochs, table[category].da_epochs)
        s = category_seconds(flops, train, test, ddad, args.tflops)
        print(f"| {category} | " + " | ".join(f"{v / 60:.1f} min" for v in s.values()) + " |")


if __name__ == "__main__":
    main()
