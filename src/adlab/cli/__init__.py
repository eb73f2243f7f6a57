"""Task functions behind ``train.py`` and ``predict.py``."""
