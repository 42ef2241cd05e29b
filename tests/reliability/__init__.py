"""Reliability and security suite: faults, floods, bad input and leaks, with figures.

Fast tests run in the normal ``pytest`` run; long ones are marked ``@pytest.mark.soak`` and run
with ``--soak`` (or ``SOAK=1`` / ``SOAK=reduced``), normally through ``scripts/soak.py``.
"""
