"""A package only so that type checkers tell its run.py from examples/cluster/run.py."""
