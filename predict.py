"""Score new images with a trained checkpoint: ``python predict.py ckpt_path=PATH input=DIR``.

The same app as ``adlab predict ...`` (:mod:`adlab.cli.main`), with outputs under the repository.
"""

import os
import sys
from pathlib import Path

from adlab.cli.main import run_command

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    run_command("predict", sys.argv[:1], sys.argv[1:])
