"""Anomaly detection methods; each subpackage holds one."""
