"""A training run prints each message once and nothing a user cannot act on (no cloud-logger
advert, no deprecation inside Lightning), while ``<run dir>/train.log`` still gets Lightning's
records."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_train_py

HYDRA_LINE = re.compile(r"^\[[^\]]+\]\[(?P<name>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$")
LIGHTNING_LINE = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR): (?P<msg>.*)$")
UNWANTED = ("litlogger", "LeafSpec", "Total length of `list`")


def _messages(output: str) -> list[str]:
    """The log messages of a console output, without the handlers' prefixes."""
    found = []
    for line in output.splitlines():
        match = HYDRA_LINE.match(line) or LIGHTNING_LINE.match(line)
        if match:
            found.append(match["msg"])
    return found


@pytest.mark.slow
def test_training_prints_each_message_once_and_no_advert(tmp_path: Path) -> None:
    overrides = ["model=autoencoder", "trainer=smoke", "dataset.gen_image_size=32"]
    overrides += ["dataset.image_size=32", "dataset.n_train=16", "dataset.n_test_good=4"]
    overrides += ["dataset.n_test_per_defect=2", "callbacks.sample_visualizer.num_samples=2"]
    proc = run_train_py(overrides, tmp_path, {"ADLAB_ROOT": str(tmp_path)})
    output = proc.stdout + proc.stderr
    messages = _messages(output)
    repeated = {m: n for m, n in Counter(messages).items() if n > 1}
    assert not repeated, f"printed more than once: {repeated}\n{output}"
    assert (
        "Seed set to 42" in messages
        and "`Trainer.fit` stopped: `max_epochs=1` reached." in messages
    )
    own = [line for line in output.splitlines() if LIGHTNING_LINE.match(line)]
    assert not own, f"Lightning's own handler printed: {own}"
    for text in UNWANTED:
        assert text not in output, f"{text!r} printed:\n{output}"
    (log,) = (tmp_path / "outputs").glob("autoencoder/synthetic/weave/*/train.log")
    assert "Seed set to 42" in log.read_text()


def test_message_parser_sees_both_handlers_formats() -> None:
    output = (
        "INFO: Seed set to 42\n[2026-12-02 07:04:11,537][lightning.fabric][INFO] - Seed set to 42\n"
    )
    assert _messages(output) == ["Seed set to 42", "Seed set to 42"]
