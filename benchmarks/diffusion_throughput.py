"""Throughput of the shared diffusion UNet (DDAD / AnoDDPM sizes) on the current device.

Reports per model and image size: parameters, forward FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode``), forward and forward+backward images/s with the
achieved GFLOP/s, and the latency per image of a ``reconstruct`` call (DDIM, ``--steps``
network evaluations). Always fp32 (no autocast). Example::

    python benchmarks/diffusion_throughput.py --models ddad --sizes 64 128 256 --batch 1
"""

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from adlab.diffusion import UNET_PRESETS, DiffusionScheduler, UNet, reconstruct

# Channel multipliers per resolution used by DDAD / AnoDDPM (guided-diffusion defaults).
CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def build_unet(model: str, size: int, device: torch.device) -> UNet:
    """UNet of the ``<model>_256`` preset with the paper's channel multipliers for ``size``."""
    cfg = UNET_PRESETS[f"{model}_256"] | dict(channel_mult=CHANNEL_MULT[size], image_size=size)
    return UNet(**cfg).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> float:
    """Mean wall-clock seconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of ``fn`` (a multiply-add counts as 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def benchmark(unet: UNet, size: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Measure one UNet at one resolution; returns a row of the results table."""
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    t = torch.randint(0, 1000, (args.batch,), device=device)

    def forward() -> None:
        with torch.no_grad():
            unet(x, t)

    def forward_backward() -> None:
        unet.zero_grad(set_to_none=True)
        (unet(x, t) - x).square().mean().backward()

    sched = DiffusionScheduler(1000).to(device)

    def recon() -> None:
        with torch.no_grad():
            reconstruct(x, args.t_start, unet, sched, num_steps=args.steps, kind="ddim")

    flops_fwd = count_flops(forward) / args.batch
    flops_fb = count_flops(forward_backward) / args.batch
    s_fwd = time_per_call(forward, args.warmup, args.iters, device)
    s_fb = time_per_call(forward_backward, args.warmup, args.iters, device)
    s_rec = time_per_call(recon, 0, args.recon_iters, device)
    return {
        "params_M": sum(p.numel() for p in unet.parameters()) / 1e6,
        "gflop_fwd": flops_fwd / 1e9,
        "fwd_img_s": args.batch / s_fwd,
        "fwd_gflops": flops_fwd * args.batch / s_fwd / 1e9,
        "fb_img_s": args.batch / s_fb,
        "fb_gflops": flops_fb * args.batch / s_fb / 1e9,
        "recon_s_img": s_rec / args.batch,
    }


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (Linux) or ``platform``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ddad"], choices=["ddad", "anoddpm"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=None, help="default 1 on CPU, 8 on GPU")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps in reconstruct")
    parser.add_argument("--t-start", type=int, default=250, help="forward steps lambda")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--recon-iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (1 if device.type == "cpu" else 8)
    print(f"device={device} ({device_name(device)}) torch={torch.__version__}")
    print(f"threads={torch.get_num_threads()} batch={args.batch} fp32")
    print(
        "| model | px | params (M) | GFLOP/img fwd | fwd img/s | fwd GFLOP/s | fwd+bwd img/s"
        f" | fwd+bwd GFLOP/s | reconstruct s/img ({args.steps} DDIM steps) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for size in args.sizes:
            torch.manual_seed(0)
            row = benchmark(build_unet(model, size, device), size, args, device)
            print(
                f"| {model} | {size} | {row['params_M']:.1f} | {row['gflop_fwd']:.1f}"
                f" | {row['fwd_img_s']:.2f} | {row['fwd_gflops']:.0f} | {row['fb_img_s']:.2f}"
                f" | {row['fb_gflops']:.0f} | {row['recon_s_img']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
