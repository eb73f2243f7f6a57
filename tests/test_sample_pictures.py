"""The run's ``sample/`` pictures: every defect type and the good set, and the extremes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adlab import types as T
from adlab.callbacks.visualize import HIGHEST, LOWEST, SampleVisualizer, pick_samples

# MVTec bottle's test order: the defect folders one after another, then good
ORDER = [("broken_large", 5), ("broken_small", 5), ("contamination", 5), ("good", 5)]


def _batches(batch_size: int = 4) -> list[dict]:
    """Test batches in folder order; the score of image ``k`` is ``k``, except two extremes."""
    records = [(d, f"{d}/{i:03d}.png") for d, n in ORDER for i in range(n)]
    scores = [float(k) for k in range(len(records))]
    scores[7], scores[16] = 100.0, -5.0  # broken_small/002 highest, good/001 lowest
    batches = []
    for start in range(0, len(records), batch_size):
        chunk = range(start, min(start + batch_size, len(records)))
        n = len(chunk)
        batch = {
            T.IMAGE: torch.rand(n, 3, 8, 8),
            T.GT_MASK: torch.zeros(n, 1, 8, 8),
            T.DEFECT_TYPE: [records[k][0] for k in chunk],
            T.IMAGE_PATH: [f"/data/test/{records[k][1]}" for k in chunk],
        }
        score = torch.tensor([scores[k] for k in chunk])
        outputs = {"anomaly_map": torch.rand(n, 1, 8, 8), "pred_score": score}
        batches.append((batch, outputs))
    return batches


def test_pictures_cover_every_defect_type_good_and_the_extremes(tmp_path: Path) -> None:
    callback = SampleVisualizer(num_samples=8, log_to_tensorboard=False)
    trainer = SimpleNamespace(log_dir=str(tmp_path), logger=None, global_step=0)
    module = SimpleNamespace(image_threshold=10.0, pixel_threshold=0.5)
    callback.on_test_start(trainer, module)
    for idx, (batch, outputs) in enumerate(_batches()):
        callback.on_test_batch_end(trainer, module, outputs, batch, idx)
    callback.on_test_end(trainer, module)
    names = sorted(p.name for p in (tmp_path / "sample").glob("*.png"))
    assert len(names) == 8
    assert names[:2] == ["00_highest_broken_small_002.png", "01_lowest_good_001.png"]
    for defect, _ in ORDER:
        assert sum(f"_{defect}_" in n for n in names[2:]) >= 1, defect
    # 6 slots over 4 groups: one each, then good and broken_large again
    assert names[2:] == [
        "02_good_000.png",
        "03_broken_large_000.png",
        "04_broken_small_000.png",
        "05_contamination_000.png",
        "06_good_002.png",
        "07_broken_large_001.png",
    ]


def _sample(key: str, defect: str, score: float) -> dict:
    return {"key": key, "defect_type": defect, "score": score}


def test_pick_samples_never_repeats_and_stops_when_images_run_out() -> None:
    good = [_sample(f"g{i}", "good", i) for i in range(2)]
    crack = [_sample("c0", "crack", 9.0)]
    extremes = {HIGHEST: crack[0], LOWEST: good[0]}
    picked = pick_samples({"crack": crack, "good": good}, extremes, num_samples=8)
    assert [(role, s["key"]) for role, s in picked] == [(HIGHEST, "c0"), (LOWEST, "g0"), ("", "g1")]
    assert [s["key"] for _, s in pick_samples({"good": good}, {}, 1)] == ["g0"]
    with pytest.raises(ValueError, match="num_samples=0"):
        SampleVisualizer(num_samples=0)
