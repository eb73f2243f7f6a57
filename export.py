"""Export a checkpoint for deployment: ``python export.py ckpt_path=PATH format=onnx``.

The same app as ``adlab export ...`` (:mod:`adlab.cli.main`), with outputs under the repository.
"""

import os
import sys
from pathlib import Path

from adlab.cli.main import run_command

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    run_command("export", sys.argv[:1], sys.argv[1:])
