"""The Hydra configs, installed as the package ``adlab.configs`` (``pkg://adlab.configs``)."""
