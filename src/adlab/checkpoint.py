"""Save and restore any adlab model from its checkpoint file alone: safely, offline.

Every entry point that reads a checkpoint (``train.py train=false``, ``predict.py``,
``evaluate.py``, ``export.py``, ``init_from``) goes through this module:

- :func:`load_checkpoint` reads the file with ``torch.load(weights_only=True)``: tensors,
  containers and the few globals of :data:`SAFE_GLOBALS` only, so a file cannot run code. A file
  that needs anything else is refused, naming the global, unless ``trust=True``.
- :func:`restore` rebuilds the module from the config stored in the file (``adlab_run``), with
  every backbone built empty (no hub download, no weights file read), then loads the file's
  ``state_dict`` strictly: weights, thresholds and calibrations (registered buffers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from adlab.backbones import weights_from_checkpoint
from adlab.callbacks.metadata import META_KEY
from adlab.models.base import AnomalyModule
from adlab.postprocess.pipeline import legacy_postprocess
from adlab.postprocess.tiler import tiler_from_config

log = logging.getLogger(__name__)

SAFE_GLOBALS: list[Any] = []
"""Globals allowed on top of torch's ``weights_only`` defaults (which already cover the
``OrderedDict`` state dicts and the ``Counter`` of MultiStepLR milestones). Every model config's
checkpoint loads with these (``tests/test_lifecycle.py``); add a class here only if it is data."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint needs arbitrary unpickling (possible code execution) to be read."""


@contextmanager
def safe_loading() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in ``torch.load(weights_only=True)`` (also Lightning's)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file)")


def load_checkpoint(ckpt_path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Read an adlab checkpoint on CPU, safely unless ``trust``.

    Args:
        ckpt_path: a ``.ckpt`` file written by ``train.py``.
        trust: allow arbitrary unpickling (``weights_only=False``): only for files whose
            origin you trust (CLI ``trust_checkpoint=true``).

    Returns:
        The checkpoint dict, with its ``adlab_run`` metadata.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds objects beyond tensors and :data:`SAFE_GLOBALS`.
        ValueError: not an adlab checkpoint.
    """
    path = Path(ckpt_path)
    _check_file(path)
    try:
        with safe_loading():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} cannot be loaded safely: it holds Python objects beyond tensors and "
                f"plain containers, and unpickling them can run arbitrary code ({err}). If you "
                "trust where the file comes from, pass trust_checkpoint=true"
            ) from err
        log.warning("trust_checkpoint=true: unpickling %s without restrictions", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or META_KEY not in ckpt:
        raise ValueError(f"{path} is not an adlab checkpoint (no '{META_KEY}' entry)")
    return ckpt


def build_model(model_cfg: dict[str, Any]) -> AnomalyModule:
    """Instantiate a module from a stored (resolved) model config with empty backbones.

    The result must get its weights from a ``state_dict`` (see :func:`restore`). A config from
    before the ``postprocess`` block is upgraded (:func:`~adlab.postprocess.pipeline.
    legacy_postprocess`).
    """
    target = get_class(model_cfg["_target_"])
    if isinstance(target, type) and issubclass(target, AnomalyModule):
        model_cfg = legacy_postprocess(model_cfg, target.default_postprocess)
    with weights_from_checkpoint():
        model = instantiate(OmegaConf.create(model_cfg))
    if not isinstance(model, AnomalyModule):
        raise TypeError(f"stored model config builds {type(model).__name__}, not an AnomalyModule")
    return model


class Restored(NamedTuple):
    """A module rebuilt from its file: ``model`` (eval mode, CPU) and the raw ``ckpt`` dict."""

    model: AnomalyModule
    ckpt: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        """The run metadata: ``model_name``, ``dataset``, ``category``, configs, ``seed``..."""
        return self.ckpt[META_KEY]


def restore(ckpt_path: str | Path, trust: bool = False) -> Restored:
    """Rebuild a trained module from its checkpoint file alone, offline.

    The stored model config rebuilds the module (backbones empty, see
    :func:`adlab.backbones.weights_from_checkpoint`); the file's ``state_dict`` is then loaded
    strictly, so every weight, threshold and calibration buffer comes from the file.

    Args:
        ckpt_path: the checkpoint.
        trust: see :func:`load_checkpoint`.

    Returns:
        The module in eval mode on CPU, and the checkpoint.
    """
    ckpt = load_checkpoint(ckpt_path, trust)
    model = build_model(ckpt[META_KEY]["model_cfg"])
    model.tiler = tiler_from_config(ckpt[META_KEY].get("dataset_cfg", {}))
    model.on_load_checkpoint(ckpt)  # before the weights, as Lightning does (legacy buffers)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"{ckpt_path}: the weights do not fit the model its stored config builds: {err}"
        ) from err
    return Restored(model.eval(), ckpt)


def config_digest(meta: dict[str, Any]) -> str:
    """``sha1:<12 hex>`` of the resolved model and dataset configs a run used (results rows).

    The prefix keeps CSV readers from parsing digests such as ``1234e5678901`` as numbers.
    """
    text = json.dumps(
        {"model": meta.get("model_cfg"), "dataset": meta.get("dataset_cfg")},
        sort_keys=True,
        default=str,
    )
    return "sha1:" + hashlib.sha1(text.encode()).hexdigest()[:12]  # never read as a number


# ---------------------------------------------------------------- the stored config, re-evaluated
def _task_overrides(cfg: DictConfig) -> list[str]:
    """The command-line overrides of this job (Hydra's ``overrides.task``)."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])


def group_choice(cfg: DictConfig, group: str) -> str | None:
    """The composed choice of a config group (``model``, ``experiment``...), if known."""
    choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
    if choice is None and HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
    return choice


def _apply_override(stored: DictConfig, cfg: DictConfig, text: str) -> None:
    """Copy the composed value of ``group.key`` (or its deletion ``~group.key``) into ``stored``."""
    name = text.split("=", 1)[0]
    key = name.lstrip("+~").split(".", 1)[1]
    if name.startswith("~"):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(stored, parent) if parent else stored
        if node is not None and leaf in node:
            node.pop(leaf)
        return
    value = OmegaConf.select(cfg, name.lstrip("+~"))
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    OmegaConf.update(stored, key, value, force_add=True, merge=False)


def stored_run_config(cfg: DictConfig, meta: dict[str, Any]) -> DictConfig:
    """``cfg`` with the model and dataset configs of a checkpoint's ``meta`` and the user's
    ``model.*`` / ``dataset.*`` / ``dataset=`` / ``category=`` overrides on top.

    Other group choices (``model=``, ``experiment=``, ``+smoke=``) do not change the stored
    model; ``model=NAME`` must name the stored model.

    Args:
        cfg: the composed ``train.yaml`` config (``ckpt_path`` set).
        meta: the checkpoint's ``adlab_run`` entry.

    Returns:
        A copy of ``cfg`` whose ``model``, ``dataset`` and ``model_name`` are the stored ones.
    """
    model = OmegaConf.create(meta["model_cfg"])
    dataset = OmegaConf.create(meta["dataset_cfg"])
    choice = group_choice(cfg, "model")
    for text in _task_overrides(cfg):
        name = text.split("=", 1)[0].lstrip("+~")
        if name == "model" and choice != meta["model_name"]:
            raise ValueError(
                f"{cfg.ckpt_path} holds a '{meta['model_name']}' model but model={choice} "
                f"was given; drop model= (the checkpoint's config is used) or pass "
                f"model={meta['model_name']}"
            )
        if name == "dataset":
            dataset = OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True))
        elif name == "category":
            dataset.category = cfg.dataset.category
        elif name.startswith("model."):
            _apply_override(model, cfg, text)
        elif name.startswith("dataset."):
            _apply_override(dataset, cfg, text)
    out = cfg.copy()
    with open_dict(out):
        out.model, out.dataset, out.model_name = model, dataset, meta["model_name"]
    return out


_STORED_KEYS = {
    "model_name": (),
    "dataset": ("dataset", "dataset.name"),
    "category": ("dataset", "category", "dataset.category"),
}
"""Stored run facts the config can name (``adlab_stored``) -> overrides that take precedence."""


@functools.lru_cache(maxsize=8)
def _stored_meta(path: str) -> dict[str, Any] | None:
    """The ``adlab_run`` entry of a checkpoint (memory-mapped, safe), None if unreadable."""
    try:
        with safe_loading():
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return dict(ckpt[META_KEY])
    except Exception:  # noqa: BLE001 - the run itself reports a bad file clearly
        return None


def stored_value(key: str, composed: Any, root: DictConfig) -> Any:
    """With ``train=false ckpt_path=FILE``, the run's ``key`` stored in FILE, else ``composed``.

    Names the run dir of a re-evaluation after the stored model, dataset and category (not the
    composed defaults); an explicit ``dataset=`` / ``category=`` / ``dataset.category=`` override
    wins for the dataset parts, as it does in :func:`stored_run_config`.
    """
    if key not in _STORED_KEYS:
        raise ValueError(f"adlab_stored: unknown key {key!r}, expected one of {list(_STORED_KEYS)}")
    if root.get("train", True) or not root.get("ckpt_path"):
        return composed
    overridden = {t.split("=", 1)[0].lstrip("+~") for t in _task_overrides(root)}
    if overridden & set(_STORED_KEYS[key]):
        return composed
    meta = _stored_meta(str(root.ckpt_path))
    return composed if meta is None else meta.get(key, composed)
