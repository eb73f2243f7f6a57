"""The package list for setuptools (everything else is in pyproject.toml).

``adlab.configs`` is the top-level ``configs/`` folder (``package-dir`` in pyproject.toml), which
``packages.find`` there cannot add next to the packages found under ``src/``.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages("src", include=["adlab", "adlab.*", "hydra_plugins*"]),
        "adlab.configs",
    ]
)
