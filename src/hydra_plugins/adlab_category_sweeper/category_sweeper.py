"""Hydra's basic sweeper plus ``dataset.category=all``.

``python train.py -m dataset=mvtec dataset.category=all`` becomes one job per category of the
composed dataset: the list named in ``hydra.sweeper.categories[<dataset.name>]``, or, for a dataset
not listed there (e.g. ``dataset=folder``), every ``<dataset.root>/<category>/train/good`` folder.
Each job is composed first, so ``experiment=...`` or a swept ``dataset=mvtec,visa`` pick the right
list. Everything else (``a=1,2`` products, ``max_batch_size``, launchers) is the basic sweeper's.
Hydra loads sweepers from the ``hydra_plugins`` namespace only, hence this package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig

ALL = "dataset.category=all"


class CategorySweeper(BasicSweeper):
    """Basic sweeper that expands ``dataset.category=all`` per job.

    Args:
        max_batch_size: jobs handed to the launcher at once (None: all).
        params: sweep parameters set in the config, as for the basic sweeper.
        categories: dataset name -> its categories, the meaning of ``all``.
    """

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.categories = {k: [str(c) for c in v] for k, v in (categories or {}).items()}

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        batch = super().get_job_batch()
        return [expanded for job in batch for expanded in self.expand(job)]

    def expand(self, job: Sequence[str]) -> list[list[str]]:
        """One override list per category when ``job`` holds ``dataset.category=all``."""
        job = list(job)
        if ALL not in job:
            return [job]
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job)
        names = self.categories_of(cfg.dataset)
        at = job.index(ALL)
        return [[*job[:at], f"dataset.category={name}", *job[at + 1 :]] for name in names]

    def categories_of(self, dataset: DictConfig) -> list[str]:
        """The categories ``all`` stands for in the composed ``dataset`` config."""
        if dataset.name in self.categories:
            return self.categories[dataset.name]
        root = Path(str(dataset.root)).expanduser()
        found = sorted(p.parent.parent.name for p in root.glob("*/train/good") if p.is_dir())
        if not found:
            raise ValueError(
                f"dataset.category=all: dataset {dataset.name!r} is not in "
                f"hydra.sweeper.categories (known: {', '.join(self.categories) or 'none'}) and "
                f"{root} holds no <category>/train/good folder; list the categories instead, "
                "e.g. dataset.category=a,b"
            )
        return found
