"""Hydra sweeper plugin: ``-m dataset.category=all`` runs one job per category of the dataset."""
