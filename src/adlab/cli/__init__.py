"""The commands: ``main`` (the ``adlab`` console script) and the ``run(cfg)`` task of each of
``train``, ``evaluate``, ``predict``, ``export`` and ``report``."""
