"""Fidelity against the official code: tensors and statistics in ``../shared/fixtures/official/``.

Each test compares an adlab part with numbers the paper's own repository computed (see that
folder's README for the calls, commits and tolerances). Never compared against adlab's own output.
The whole module skips when ``../shared`` is absent (a checkout outside the project workspace).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"
pytestmark = pytest.mark.skipif(
    not OFFICIAL.is_dir(), reason=f"official fixtures not found at {OFFICIAL}"
)


def _load(name: str) -> dict[str, Any]:
    path = OFFICIAL / name
    if not path.exists():
        pytest.skip(f"{path} missing")
    return torch.load(path, weights_only=True)


def _dequantize(q: dict[str, Tensor], exp: dict[str, Any]) -> dict[str, Tensor]:
    """``state_dict_q`` / ``state_dict_exp`` -> float weights (README: int8 ``q * 2**exp``)."""
    out = {}
    for key, value in q.items():
        if key in exp and value.dtype == torch.int8:
            out[key] = value.float() * 2.0 ** float(exp[key])
        else:
            out[key] = value.float() if value.is_floating_point() else value
    return out


# ------------------------------------------------------------------------------------- AnoDDPM
def _acf(noise: Tensor, lags: list[int]) -> list[float]:
    """README definition: per-map standardised, mean of the x and y lag products."""
    n = (noise - noise.mean()) / noise.std()
    return [
        (((n[:, k:] * n[:, :-k]).mean() + (n[k:, :] * n[:-k, :]).mean()) / 2).item() for k in lags
    ]


def test_anoddpm_simplex_matches_official_std_and_spectrum() -> None:
    """The model config's noise: std within 0.05 and every acf lag within 0.05, over 16 maps."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = OFFICIAL / "anoddpm_simplex.json"
    if not path.exists():
        pytest.skip(f"{path} missing")
    ref = json.loads(path.read_text())
    config = Path(__file__).resolve().parents[1] / "configs" / "model" / "anoddpm.yaml"
    noise_fn = instantiate(OmegaConf.load(config).noise_scheduler.noise_fn)
    timesteps = [m["T"] for m in ref["per_map"]]
    stds, acfs = [], []
    for k in range(16):
        like = torch.zeros(1, 1, 256, 256, dtype=torch.float64)
        generator = torch.Generator().manual_seed(k)
        noise = noise_fn(like, torch.tensor([timesteps[k % 8]]), generator)[0, 0]
        stds.append(noise.std().item())
        acfs.append(_acf(noise, ref["lags"]))
    assert np.mean(stds) == pytest.approx(ref["aggregate"]["std"], abs=0.05)
    np.testing.assert_allclose(np.mean(acfs, axis=0), ref["aggregate"]["acf"], atol=0.05)
