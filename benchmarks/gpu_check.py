"""One method at paper size on one GPU: fp32 vs the fast path, MFU, projected recipe time.

Called by ``benchmarks/gpu_check.sh`` once per method (each under its own time limit). The method
is composed from ``experiment=<method>_mvtec`` (paper image size, batch size, epochs) on the
built-in synthetic ``weave`` category generated at that size (no dataset, no download: the
ImageNet backbones are built with random weights, which does not change their speed).

- ``fp32``: ``trainer.precision=32-true``, TF32 off, eager, NCHW (FastPath all off).
- ``fast``: ``bf16-mixed``, TF32, fused Adam(W), ``channels_last`` (+ ``torch.compile`` with
  ``--compile``): what ``callbacks.fast_path`` gives on a GPU with those options on.

Printed per variant: train and test images/s (batch hooks, first batch of each stage excluded,
CUDA-synchronised), train TFLOP/s from ``FlopCounterMode`` (one fp32 step) and MFU = that over
the GPU's dense bf16 peak (``--peak-tflops``; default from the device name: H100 SXM / H200
989, H100 PCIe 756, A100 312). ``--dry-run`` runs the same code on the CPU at smoke size, fp32
for both variants, MFU against the measured conv3x3 peak (a check of the script, not a result).
The projection for one MVTec category (bottle: 209 train, 83 test
images) is recipe training images / train images/s + test images / test images/s (DDAD's
domain-adaptation epochs are not included).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from speed import ROOT, _train_flops, measure_peaks, run_variant

from adlab.data.synthetic import generate_category

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}
MVTEC_BOTTLE = (209, 83)
EVAL_BATCH = {"anoddpm": 2}  # 250 UNet steps per test batch: two small batches fit the budget
_FE, _TEACHER = "model.feature_extractor", "model.model.teacher"
RANDOM_BACKBONES = {
    "ddad": [f"{_FE}.weights=null", f"{_FE}.allow_random_init=true"],
    "dmad": [f"{_TEACHER}.weights=null", f"{_TEACHER}.allow_random_init=true"],
}


def peak_tflops(override: float | None) -> float:
    """The GPU's dense bf16 peak in TFLOP/s."""
    if override:
        return override
    name = torch.cuda.get_device_name()
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    raise ValueError(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16)")


def paper_config(method: str, out: Path, dry_run: bool) -> Any:
    """``experiment=<method>_mvtec`` with the synthetic ``weave`` set at the paper size
    (``dry_run``: at the method's smoke size, 32 px, batch <= 4)."""
    overrides = [f"experiment={method}_mvtec", "logger=none", *RANDOM_BACKBONES.get(method, [])]
    if dry_run:
        overrides += [f"+smoke={method}", "dataset.image_size=32", "dataset.batch_size=4"]
        overrides += ["model.postprocess.eval_crop=null"] if method == "ddad" else []
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides, return_hydra_config=True)
        synthetic = compose("train.yaml", ["dataset=synthetic"]).dataset
    size, batch = cfg.dataset.image_size, cfg.dataset.batch_size
    with open_dict(synthetic):
        synthetic.root = str(out / "data")
        synthetic.image_size = synthetic.gen_image_size = size
        synthetic.n_train, synthetic.n_test_good, synthetic.n_test_per_defect = 2 * batch, 8, 4
        synthetic.batch_size = batch
        synthetic.eval_batch_size = min(cfg.dataset.eval_batch_size, EVAL_BATCH.get(method, 8))
    with open_dict(cfg):
        cfg.dataset = synthetic
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out / "run")
    generate_category(
        out / "data", "weave", image_size=size, n_train=2 * batch, n_test_good=8,
        n_test_per_defect=4,
    )  # fmt: skip
    return cfg


def recipe_images(cfg: Any, n_train: int) -> int:
    """Training images the recipe processes: max_steps x batch, else max_epochs x n_train."""
    steps = cfg.trainer.get("max_steps", -1) or -1
    if steps > 0:
        return steps * cfg.dataset.batch_size
    return int(cfg.trainer.max_epochs) * n_train


def measure(method: str, compile_fast: bool, peak: float, dry_run: bool) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"gpu_check_{method}_"))
    cfg = paper_config(method, out, dry_run)
    accelerator, fast_precision = ("cpu", "32-true") if dry_run else ("gpu", "bf16-mixed")
    variants = {
        "fp32": ("eager", "32-true"),
        "fast": ("channels_last+compile" if compile_fast else "channels_last", fast_precision),
    }
    rows: dict[str, Any] = {}
    for name, (variant, precision) in variants.items():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        rows[name] = run_variant(cfg, variant, 4, False, 2, accelerator, precision)
    flops = _flops_per_image(cfg, accelerator)
    train, test = MVTEC_BOTTLE
    for row in rows.values():
        if flops and "train_img_s" in row:
            row["train_tflops"] = row["train_img_s"] * flops / 1e12
            row["mfu_bf16"] = row["train_tflops"] / peak
        seconds = recipe_images(cfg, train) / row.get("train_img_s", float("inf"))
        row["bottle_recipe_min"] = (seconds + test / row["test_img_s"]) / 60
        row["test_s_per_img"] = 1 / row["test_img_s"]
    return {"method": method, "image_size": cfg.dataset.image_size, "variants": rows}


def _flops_per_image(cfg: Any, accelerator: str) -> float | None:
    """FLOPs of one fp32 training step per image (None for methods without training)."""
    from hydra.utils import instantiate

    module, datamodule = instantiate(cfg.model), instantiate(cfg.dataset)
    if not module.requires_training:
        return None
    trainer_kw = dict(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, inference_mode=cfg.trainer.get("inference_mode", True),
    )  # fmt: skip
    return _train_flops(module, datamodule, trainer_kw)["train_gflop_per_img"] * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--compile", action="store_true", help="fast path with torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--dry-run", action="store_true",
        help="CPU, smoke size, 32 px, fp32 both (bf16 is a GPU option); peak: measured conv3x3",
    )  # fmt: skip
    args = parser.parse_args()
    peak = measure_peaks()["convolution"] / 1e3 if args.dry_run else peak_tflops(args.peak_tflops)
    result = measure(args.method, args.compile, peak, args.dry_run)
    print("RESULT " + json.dumps(result), flush=True)
    for name, row in result["variants"].items():
        print(
            f"{args.method:12s} {name:5s} {result['image_size']} px"
            f"  train {row.get('train_img_s', 0):8.2f} img/s"
            f"  test {row['test_img_s']:8.2f} img/s ({row['test_s_per_img']:.3f} s/img)"
            f"  MFU {row.get('mfu_bf16', float('nan')):.3f}"
            f"  bottle recipe {row['bottle_recipe_min']:.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
