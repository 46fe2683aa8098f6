"""Standard agents and destination workers: they run jobs as subprocesses and report how they ended."""
