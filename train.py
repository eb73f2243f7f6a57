"""Train and test one method on one dataset category: ``python train.py model=... dataset=...``.

The same app as ``adlab train ...`` (:mod:`adlab.cli.main`), with outputs under the repository.
"""

import os
import sys
from pathlib import Path

from adlab.cli.main import run_command

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    run_command("train", sys.argv[:1], sys.argv[1:])
