"""The command-line entry points: ``swarmlearn`` (``main``) and its ``ledger`` and
``collect-logs`` subcommands.
"""
