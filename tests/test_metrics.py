"""Metrics against sklearn and a slow, threshold-by-threshold AUPRO reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from adlab.metrics import METRIC_NAMES, AnomalyMetrics, aupro, f1_max
from adlab.metrics.aupro import region_weights

SEEDS = (0, 1, 2)


def _random_case(seed: int, ties: bool, n: int = 8, size: int = 16) -> dict[str, torch.Tensor]:
    """Unbounded scores (sigmoid would saturate them), 1-3 rectangles per anomalous image."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) >= n // 2).long()
    masks = torch.zeros(n, 1, size, size)
    for i in range(n // 2, n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            y, x = torch.randint(0, size - 3, (2,), generator=g).tolist()
            h, w = torch.randint(1, 4, (2,), generator=g).tolist()
            masks[i, 0, y : y + h, x : x + w] = 1
    maps = 20 * torch.randn(n, 1, size, size, generator=g) + 30 * masks
    scores = 20 * torch.randn(n, generator=g) + 25 * labels
    if ties:
        maps, scores = (maps / 10).round(), (scores / 10).round()
    has_mask = torch.ones(n, dtype=torch.bool)
    has_mask[-1] = False
    return {"scores": scores, "labels": labels, "maps": maps, "masks": masks, "has_mask": has_mask}


def _reference_aupro(maps: torch.Tensor, masks: torch.Tensor, limit: float = 0.3) -> float:
    """One threshold at a time: PRO and FPR at every unique score, then clipped trapezoids."""
    maps = maps.numpy().reshape(-1, *maps.shape[-2:]).astype(np.float64)
    masks = masks.numpy().reshape(maps.shape) > 0.5
    regions = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        pro = np.mean([pred[i][region].mean() for i, region in regions])
        points.append((pred[~masks].mean(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 > limit:
            x1, y1 = limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _sklearn_f1_max(scores: np.ndarray, target: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(target, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def _compute_quietly(metric: AnomalyMetrics) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_f1_max_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, 300)
    scores = 30 * rng.standard_normal(300) + 20 * target
    if ties:
        scores = np.round(scores / 10)
    f1, threshold = f1_max(torch.from_numpy(scores), torch.from_numpy(target))
    assert f1 == pytest.approx(_sklearn_f1_max(scores, target), abs=1e-6)
    assert f1_score(target, scores >= threshold) == pytest.approx(f1, abs=1e-6)


def test_f1_max_edge_cases() -> None:
    scores = torch.tensor([0.3, 5.0, -2.0])
    f1, threshold = f1_max(scores, torch.zeros(3))
    assert math.isnan(f1) and math.isnan(threshold)
    assert f1_max(scores, torch.ones(3)) == (1.0, -2.0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_reference(seed: int, ties: bool) -> None:
    case = _random_case(seed, ties)
    for limit in (0.3, 1.0):
        expected = _reference_aupro(case["maps"], case["masks"], limit)
        assert aupro(case["maps"], case["masks"], limit) == pytest.approx(expected, abs=1e-6)


def test_aupro_known_values() -> None:
    masks = _random_case(0, ties=False)["masks"]
    assert aupro(masks, masks) == pytest.approx(1.0)
    # A constant map has one threshold: the curve (0, 0) -> (1, 1), so the area is limit^2 / 2.
    assert aupro(torch.full_like(masks, 7.0), masks) == pytest.approx(0.15)
    assert aupro(torch.zeros_like(masks), masks, fpr_limit=0.5) == pytest.approx(0.25)
    assert aupro(1 - masks, masks) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(aupro(masks, torch.zeros_like(masks)))
    assert math.isnan(aupro(masks, torch.ones_like(masks)))


def test_regions_are_8_connected() -> None:
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 1, 1:4] = True
    mask[0, 2, 4] = True  # touches (1, 3) diagonally only
    mask[0, 4, 0] = True
    weights, n_regions = region_weights(mask)
    assert n_regions == 2
    assert weights[0, 2, 4] == pytest.approx(0.25) and weights[0, 4, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_anomaly_metrics_match_sklearn(seed: int, ties: bool) -> None:
    case = _random_case(seed, ties)
    metric = AnomalyMetrics()
    for part in torch.arange(8).split(3):
        metric.update(*(case[k][part] for k in ("scores", "labels", "maps", "masks", "has_mask")))
    out = metric.compute()
    assert tuple(out) == METRIC_NAMES
    scores, labels = case["scores"].numpy(), case["labels"].numpy()
    assert out["img_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert out["img_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert out["img_f1max"] == pytest.approx(_sklearn_f1_max(scores, labels), abs=1e-6)
    assert f1_score(labels, scores >= out["img_threshold"]) == pytest.approx(out["img_f1max"])
    keep = case["has_mask"]
    maps, masks = case["maps"][keep], case["masks"][keep]
    pixels, target = maps.flatten().numpy(), masks.flatten().numpy().astype(int)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(target, pixels), abs=1e-6)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(target, pixels), abs=1e-6)
    assert out["pixel_f1max"] == pytest.approx(_sklearn_f1_max(pixels, target), abs=1e-6)
    assert f1_score(target, pixels >= out["pixel_threshold"]) == pytest.approx(out["pixel_f1max"])
    assert out["pixel_aupro"] == pytest.approx(_reference_aupro(maps, masks), abs=1e-6)


def test_accumulation_and_has_mask() -> None:
    case = _random_case(3, ties=True)
    keys = ("scores", "labels", "maps", "masks", "has_mask")
    once, batched, subset = AnomalyMetrics(), AnomalyMetrics(), AnomalyMetrics()
    once.update(*(case[k] for k in keys))
    for part in torch.arange(8).split(2):
        batched.update(*(case[k][part] for k in keys))
    keep = case["has_mask"]
    subset.update(*(case[k][keep] for k in keys[:4]))
    assert batched.compute() == pytest.approx(once.compute())
    pixel = {k: v for k, v in once.compute().items() if k.startswith("pixel_")}
    assert pixel == pytest.approx({k: subset.compute()[k] for k in pixel})


def test_single_class_gives_nan_and_one_warning() -> None:
    case = _random_case(4, ties=False)
    metric = AnomalyMetrics()
    normal = case["labels"] == 0
    metric.update(*(case[k][normal] for k in ("scores", "labels", "maps", "masks")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = metric.compute()
    assert len(caught) == 1 and "img_auroc" in str(caught[0].message)
    assert set(out) == set(METRIC_NAMES) and all(math.isnan(v) for v in out.values())


def test_only_anomalous_images_and_missing_masks() -> None:
    case = _random_case(5, ties=False)
    anomalous = case["labels"] == 1
    metric = AnomalyMetrics()
    metric.update(*(case[k][anomalous] for k in ("scores", "labels", "maps", "masks")))
    out = _compute_quietly(metric)
    assert math.isnan(out["img_auroc"]) and out["img_ap"] == pytest.approx(1.0)
    assert not math.isnan(out["img_threshold"]) and not math.isnan(out["pixel_aupro"])
    no_masks = AnomalyMetrics()
    no_masks.update(*(case[k] for k in ("scores", "labels", "maps", "masks")), case["labels"] < 0)
    with pytest.warns(UserWarning, match="pixel_aupro"):
        out = no_masks.compute()
    assert all(math.isnan(out[k]) for k in METRIC_NAMES if k.startswith("pixel_"))


def test_image_only() -> None:
    case = _random_case(6, ties=False)
    without_maps, disabled = AnomalyMetrics(), AnomalyMetrics(pixel_metrics=False)
    without_maps.update(case["scores"], case["labels"])
    disabled.update(*(case[k] for k in ("scores", "labels", "maps", "masks")))
    assert tuple(without_maps.compute()) == tuple(disabled.compute()) == METRIC_NAMES[:4]


@pytest.mark.parametrize("field", ["scores", "maps"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused(field: str, bad: float) -> None:
    case = _random_case(5, ties=False)
    case[field] = case[field].clone()
    case[field].view(-1)[3] = bad
    metric = AnomalyMetrics()
    with pytest.raises(ValueError, match="non-finite"):
        metric.update(*(case[k] for k in ("scores", "labels", "maps", "masks")))
