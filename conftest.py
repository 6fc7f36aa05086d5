"""Loaded by pytest before any test module (and so before torch is imported).

OpenMP threads that spin while waiting make many small torch ops up to 20x slower
when other processes (Ray workers, a second test process) share the two cores; a
passive wait policy keeps the tiny-model tests fast and their timing stable.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is unreachable from CI: fail fast, never retry
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
