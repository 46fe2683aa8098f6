"""Example jobnets and the Python callables their ``call`` jobs run."""
