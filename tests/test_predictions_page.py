"""The predictions page (``index.html`` of predict.py / evaluate.py): files, and a real browser.

The browser test drives headless Chromium (Debian's ``chromium`` + ``chromium-driver``, which
``.ci/run`` installs) through Selenium: it moves the threshold slider and checks that the page's
flagged count equals the number of ``predictions.csv`` scores at or above the page's threshold.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CONFIG_DIR, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

from adlab.cli import evaluate, predict, train
from adlab.deploy import DeployInfo, OutputWriter
from adlab.predictions_page import PAGE_NAME, THUMBNAIL_SIZE

N_IMAGES = 40


def _write_predictions(out: Path, n: int = N_IMAGES) -> tuple[pd.DataFrame, float]:
    """``n`` random 200x260 images in two sub-folders, labelled, through :class:`OutputWriter`."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(n, generator=gen)
    threshold = float(scores.median())
    info = DeployInfo("autoencoder", (32, 32), None, threshold, 0.7, 0.0, 1.0, "test")
    writer = OutputWriter(out, info, title="autoencoder on test images")
    for i in range(n):
        defect = "good" if i % 2 else "crack"
        image = torch.rand(3, 200, 260, generator=gen)
        amap = torch.rand(1, 32, 32, generator=gen)
        mask = (amap > 0.9).float() if i % 2 == 0 else None
        name = Path(defect) / f"{i:03d}.png"
        (out / "in" / defect).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).byte().permute(1, 2, 0).numpy()).save(out / "in" / name)
        writer.write(
            out / "in" / name, name, image, amap, float(scores[i]), gt_mask=mask,
            gt_label=int(defect != "good"), defect_type=defect,
        )  # fmt: skip
    return writer.finish(), threshold


def _page_data(page: Path) -> dict:
    text = page.read_text()
    found = re.search(r'<script id="page-data" type="application/json">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1))


def test_page_is_self_contained_with_thumbnails(tmp_path: Path) -> None:
    table, threshold = _write_predictions(tmp_path)
    page = tmp_path / PAGE_NAME
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "base64" not in text and "<link" not in text
    assert len(text) < 30_000 + 400 * N_IMAGES  # a table, not images
    data = _page_data(page)
    assert data["threshold"] == threshold
    assert [d["name"] for d in data["items"]] == list(table.name)
    assert [d["score"] for d in data["items"]] == list(table.score)
    for item in data["items"]:
        for key in ("thumbnail", "overlay_thumbnail", "overlay", "mask"):
            with Image.open(tmp_path / item[key]) as img:
                assert max(img.size) == (THUMBNAIL_SIZE if "thumb" in key else 260), key
        assert item["image"].startswith("in/") and item["label"] in (0, 1)
        assert (item["gt_mask"] is None) == (item["defect_type"] == "good")
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert list(written.columns[-3:]) == ["gt_label", "defect_type", "gt_mask"]
    with Image.open(tmp_path / written.gt_mask.dropna().iloc[0]) as gt:
        assert gt.size == (260, 200)  # the ground truth at the original size


def _browser():
    """A headless Chromium WebDriver, or a skip naming what is missing."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')"
    )
    found = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    binary = next((path for path in found if path), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(
            "headless Chromium not found (chromium and chromedriver on PATH; "
            "Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)


def _flagged_matches_csv(driver, scores: pd.Series) -> float:
    value = driver.find_element("id", "threshold-value").get_attribute("data-threshold")
    threshold = float(value)
    flagged = int(driver.find_element("id", "flagged-count").text)
    assert flagged == int((scores >= threshold).sum()), (threshold, flagged)
    return threshold


def test_slider_relabels_live_in_headless_chromium(tmp_path: Path) -> None:
    _, stored = _write_predictions(tmp_path)
    scores = pd.read_csv(tmp_path / "predictions.csv").score
    driver = _browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    try:
        driver.get((tmp_path / PAGE_NAME).as_uri())
        assert _flagged_matches_csv(driver, scores) == stored  # opens at the F1-optimal value
        slider = driver.find_element("id", "slider")
        seen = {stored}
        for keys in (Keys.HOME, Keys.PAGE_UP, Keys.PAGE_UP, Keys.END, Keys.PAGE_DOWN):
            slider.send_keys(keys)
            seen.add(_flagged_matches_csv(driver, scores))
        width = slider.size["width"]
        for fraction in (0.2, 0.45, 0.8):  # click on the track: the thumb jumps there
            x = int((fraction - 0.5) * width)
            ActionChains(driver).move_to_element_with_offset(slider, x, 0).click().perform()
            seen.add(_flagged_matches_csv(driver, scores))
        assert len(seen) >= 7  # every move changed the threshold
        assert int(driver.find_element("id", "flagged-count").text) not in (0, len(scores))
        driver.find_element("id", "reset").click()
        assert _flagged_matches_csv(driver, scores) == stored
        histogram = driver.find_element("id", "histogram")
        assert len(histogram.find_elements("css selector", "rect")) >= 2
        assert "anomalous (20)" in driver.find_element("id", "legend").text
        first = driver.find_element("css selector", "#grid .card")
        top = float(first.find_element("css selector", ".score").text)
        assert top == pytest.approx(scores.max(), rel=1e-3)  # sorted by score
        first.click()
        panes = driver.find_elements("css selector", "#panes img")
        loaded = [driver.execute_script("return arguments[0].naturalWidth", p) for p in panes]
        assert len(panes) in (3, 4) and all(w > 0 for w in loaded)  # file:// links resolve
    finally:
        driver.quit()


def test_predict_and_evaluate_write_the_page(tmp_path: Path, synthetic_root: Path) -> None:
    """End to end: a 1-epoch autoencoder, then predict.py and evaluate.py on its test images."""
    overrides = ["trainer=smoke", "+smoke=autoencoder", "trainer.max_epochs=1", "logger=none"]
    cfg = compose_train(tmp_path, synthetic_root, [*overrides, "callbacks.sample_visualizer=null"])
    HydraConfig().set_config(cfg)
    train.run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "model.ckpt"
    test_dir = synthetic_root / "weave" / "test"
    pred_cfg = {"ckpt_path": str(ckpt), "input": str(test_dir), "backend": "lightning"}
    pred_cfg |= {"batch_size": 4, "accelerator": "cpu", "output_dir": str(tmp_path / "pred")}
    table = predict.run(OmegaConf.create(pred_cfg))
    items = _page_data(tmp_path / "pred" / PAGE_NAME)["items"]
    assert [d["name"] for d in items] == list(table.name) and len(items) == len(table) > 4
    assert all(d["label"] is None for d in items)  # new images: no labels
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        eval_cfg = compose("evaluate.yaml", overrides=[f"ckpt={ckpt}"])
    with open_dict(eval_cfg):
        eval_cfg.techniques = {"none": eval_cfg.techniques.none}
        eval_cfg.merge_with({"output_dir": str(tmp_path / "eval"), "device": "cpu"})
        eval_cfg.curves = False
    evaluate.run(eval_cfg)
    page = next((tmp_path / "eval" / "pages").glob(f"*/{PAGE_NAME}"))
    assert page.parent.name in (tmp_path / "eval" / PAGE_NAME).read_text()
    labelled = _page_data(page)["items"]
    assert sorted(d["name"] for d in labelled) == sorted(f"test/{n}" for n in table.name)
    assert {d["label"] for d in labelled} == {0, 1}
    assert all((d["gt_mask"] is None) == (d["label"] == 0) for d in labelled)
    assert all((page.parent / d["gt_mask"]).is_file() for d in labelled if d["gt_mask"])
