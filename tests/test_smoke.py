"""Every ``configs/model/*.yaml`` trains and tests end to end at its smoke size, and detects the
built-in synthetic defects: ``configs/smoke/<m>.yaml`` sets the sizes (and may set
``smoke_min_img_auroc``, default 0.75, and ``smoke_image_size``, the size the 64 px images are
resized to). New methods are covered without editing this file.

Each bar carries a measured margin: ``benchmarks/smoke_margin.py`` repeats this run at seeds 0-2
and 1 and 2 threads, and the minimum of the six must clear the bar by 0.05 (the table is in each
smoke config's comment). The test runs seed 0, one of the six."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import DETECT_GEN, MODEL_CONFIGS, compose_train
from hydra.core.hydra_config import HydraConfig

from adlab.cli import train
from adlab.data.synthetic import SMOKE_DEFAULT_BAR

SMOKE_SEED = 0  # one of benchmarks/smoke_margin.py's seeds
MIN_BAR = 0.70  # no bar may be set lower (null = no bar, for random-weight configs only)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_model_trains_tests_and_detects(model: str, tmp_path: Path, detect_root: Path) -> None:
    cfg = compose_train(
        tmp_path,
        detect_root,
        [f"model={model}", "trainer=smoke", f"+smoke={model}", f"seed={SMOKE_SEED}"],
        DETECT_GEN,
    )
    if cfg.get("smoke_image_size"):  # the method runs at another size than the 64 px generated
        cfg.dataset.image_size = cfg.smoke_image_size
    HydraConfig().set_config(cfg)
    results = train.run(cfg)
    table = pd.read_csv(cfg.paths.results_csv)
    assert len(table) == 1 and table.iloc[0].model == model
    assert table.iloc[0].category == "weave"
    for key in ("img_auroc", "pixel_auroc"):
        assert 0.0 <= results[key] <= 1.0, f"{model}: {key} {results[key]}"
    minimum = cfg.get("smoke_min_img_auroc", SMOKE_DEFAULT_BAR)
    if minimum is None:  # random weights detect nothing: the method's own tests check the run
        assert cfg.model.get("random_init"), f"{model}: only random-weight configs may have no bar"
        return
    assert minimum >= MIN_BAR, f"{model}: smoke bar {minimum} below {MIN_BAR}"
    assert results["img_auroc"] >= minimum, f"{model}: img_auroc {results['img_auroc']:.3f}"
