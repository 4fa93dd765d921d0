"""Runners for the peer methods we benchmark against (each in its own environment, run as subprocesses)."""
