"""Datasets and DataModules; every dataset family reads the MVTec AD folder layout."""

from adlab.data.folder import (
    DatasetError,
    MVTecLayoutDataModule,
    MVTecLayoutDataset,
    Sample,
)
from adlab.data.synthetic import SYNTHETIC_CATEGORIES, SyntheticDataModule, generate_category

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "DatasetError",
    "MVTecLayoutDataModule",
    "MVTecLayoutDataset",
    "Sample",
    "SyntheticDataModule",
    "generate_category",
]
