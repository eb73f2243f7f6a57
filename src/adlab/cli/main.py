"""``adlab COMMAND [OVERRIDE ...]``: the console script (train, evaluate, predict, export, report).

Each command is a Hydra app on the configs installed with the package (``pkg://adlab.configs``:
the repository's ``configs/`` folder), with the same overrides as the root scripts (``train.py``
etc.), which run the same apps through :func:`run_command`. ``adlab --help`` lists the commands
and the packaged models, datasets and experiments; ``adlab COMMAND --help`` is Hydra's help for
that command's config. ``adlab train`` returns ``optimized_metric``'s test value to Hydra's
sweepers (``-m hydra/sweeper=optuna``, README: Hyperparameter search).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from importlib import import_module, resources
from typing import Any

import hydra
from omegaconf import DictConfig

import adlab  # noqa: F401  (registers the adlab_stored config resolver)

CONFIG_PACKAGE = "adlab.configs"
COMMANDS = {
    "train": "train and test one method on one dataset category, or evaluate a checkpoint",
    "evaluate": "compare checkpoints and post-processing techniques",
    "predict": "score new images with a trained checkpoint",
    "export": "export a checkpoint for deployment (ONNX)",
    "report": "best-model report from the results table and the run dirs",
}
LISTED_GROUPS = {"model": "models", "dataset": "datasets", "experiment": "experiments"}
# What a run would print that no user can act on, dropped by logger and message start:
# Lightning's advert for a cloud logger, and its note that the experiment of a new MLflow store
# (one per run dir) is created. Warnings: deprecations inside Lightning itself (torch's LeafSpec,
# and the all_gather of its DDP strategy), and the one for an empty *list* of validation loaders,
# which is how adlab's datamodules say "no validation" (dataset.val_split=none).
DROPPED_RECORDS = {
    "lightning.pytorch.utilities.rank_zero": "💡 Tip: For seamless cloud logging",
    "lightning.pytorch.loggers.mlflow": "Experiment with name",
}
IGNORED_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", FutureWarning),
    (r"Total length of `list` across ranks is zero", UserWarning),
)
QUIET_LOGGERS = ("mlflow.store.db.utils",)  # INFO: creating the tables of a new MLflow store
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def config_options(group: str) -> list[str]:
    """The options of a packaged config group: the names of ``configs/<group>/*.yaml``."""
    folder = resources.files(CONFIG_PACKAGE) / group
    return sorted(
        f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")
    )


def usage() -> str:
    """``adlab --help``: the commands and the packaged models, datasets and experiments."""
    lines = ["usage: adlab COMMAND [OVERRIDE ...]   (Hydra overrides, e.g. model=draem)", ""]
    lines += ["commands:", *(f"  {name:<10}{text}" for name, text in COMMANDS.items()), ""]
    for group, title in LISTED_GROUPS.items():
        lines += [f"{title} ({group}=NAME):", f"  {' '.join(config_options(group))}"]
    lines += ["", "adlab COMMAND --help: the command's config groups and its composed config"]
    return "\n".join(lines)


class _DropPrefix(logging.Filter):
    """Drop the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_console() -> None:
    """Print each message once, and none that a user cannot act on (after Hydra's log set-up).

    ``import lightning`` gives the ``lightning`` logger a console handler of its own (and, when it
    comes before Hydra's logging set-up, ``lightning.pytorch`` / ``lightning.fabric`` too, with
    propagation off), so every Lightning record was printed twice: there and by Hydra's root
    handlers, which also write ``<output_dir>/<job>.log``. Once the root has handlers, Lightning's
    are removed and its records propagate to them. Under DDP, ranks 1.. print only warnings and
    errors: their INFO lines repeat rank 0's (their own ``.log`` files keep them).
    """
    from lightning.pytorch.utilities import rank_zero_only  # adds those handlers on first import

    root = logging.getLogger()
    if root.handlers:
        for name in LIGHTNING_LOGGERS:
            own = logging.getLogger(name)
            for handler in list(own.handlers):
                own.removeHandler(handler)
            own.propagate = True
    if rank_zero_only.rank > 0:
        for handler in root.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
    _drop_noise()


def _drop_noise() -> None:
    """Drop :data:`DROPPED_RECORDS` and :data:`IGNORED_WARNINGS`; quieten :data:`QUIET_LOGGERS`."""
    for name, prefix in DROPPED_RECORDS.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) for f in target.filters):
            target.addFilter(_DropPrefix(prefix))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def sweep_value(cfg: DictConfig, results: dict[str, float]) -> float | None:
    """``results[cfg.optimized_metric]``, what Hydra's sweepers optimise (None: no such key set).

    Args:
        cfg: the train config; ``optimized_metric`` names a test result, e.g. ``img_auroc``.
        results: the test results of :func:`adlab.cli.train.run`.
    """
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in results:
        available = ", ".join(sorted(results)) or "none: the run was skipped or had test=false"
        raise KeyError(f"optimized_metric={key} is not a test result of this run ({available})")
    return float(results[key])


def _check_sweep_key(cfg: DictConfig) -> None:
    """Refuse before training an ``optimized_metric`` that the run cannot produce."""
    if cfg.get("optimized_metric") is not None and not cfg.test:
        raise ValueError(
            f"optimized_metric={cfg.optimized_metric} is a test result: it needs test=true"
        )


def _task(command: str, argv: list[str]) -> Callable[[DictConfig], Any]:
    """The Hydra task function of ``command``; ``argv``: the process's command line."""

    def task(cfg: DictConfig) -> Any:
        if command == "train":
            _check_sweep_key(cfg)
        sys.argv = list(argv)  # what Lightning's DDP launcher re-runs for ranks 1..
        quiet_console()
        results = import_module(f"adlab.cli.{command}").run(cfg)
        return sweep_value(cfg, results) if command == "train" else None

    task.__module__ = f"adlab.cli.{command}"  # Hydra names the job (and <job>.log) after it
    return task


def run_command(command: str, program: list[str], overrides: list[str]) -> None:
    """Run ``command``'s Hydra app on the packaged configs.

    Args:
        command: a key of :data:`COMMANDS`.
        program: how this process was started, without the overrides: ``["train.py"]`` for a
            root script, ``[".../adlab", "train"]`` for the console script.
        overrides: Hydra's command line (overrides, ``-m``, ``--help``, ...).
    """
    app = hydra.main(
        version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=command
    )(_task(command, [*program, *overrides]))
    sys.argv = [program[0], *overrides]  # what Hydra parses
    app()


def main(argv: list[str] | None = None) -> None:
    """The ``adlab`` console script: ``adlab COMMAND [OVERRIDE ...]`` (``argv``: after the name)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return
    if not argv:
        sys.exit(usage())
    command, *overrides = argv
    if command not in COMMANDS:
        sys.exit(f"adlab: unknown command '{command}' (choose from {', '.join(COMMANDS)})")
    run_command(command, [sys.argv[0], command], overrides)
