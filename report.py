"""Best-model report from the results table and run dirs: ``python report.py``.

The same app as ``adlab report ...`` (:mod:`adlab.cli.main`), with outputs under the repository.
"""

import os
import sys
from pathlib import Path

from adlab.cli.main import run_command

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    run_command("report", sys.argv[:1], sys.argv[1:])
