"""SWOP: take tasks from the ledger and run them on this host (profile, tasks, runner)."""
