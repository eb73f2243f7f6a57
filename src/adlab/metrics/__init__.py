"""Evaluation metrics: image/pixel AUROC, AP, F1-max with its threshold, and AUPRO."""

from adlab.metrics.aupro import aupro
from adlab.metrics.collection import METRIC_NAMES, AnomalyMetrics
from adlab.metrics.threshold import f1_max

__all__ = ["METRIC_NAMES", "AnomalyMetrics", "aupro", "f1_max"]
