"""Which rows each replica process has started generating: the record that decides who is charged
when a replica dies.

A replica writes the keys of a batch here, and waits for the write, *before* it starts generating
them; it removes them once their results are sent. When the replica dies, the driver takes what
that process had started and not finished: only those rows get an attempt counted. Rows that sat
in a queued unit, or in a later batch of a unit, go back to the queue free of charge, so a good
row is never marked ``error`` because its neighbours' replica was killed.

The ledger is a tiny actor on the driver's node (no CPU reserved); entries are per replica name
and process id, so a restarted replica's new rows are never confused with its old ones.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional


class RowLedger:
    """The actor class (wrapped with ``ray.remote`` by :func:`start_ledger`)."""

    def __init__(self) -> None:
        self._started: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))

    def begin(self, replica: str, pid: int, keys: list[str]) -> None:
        """``replica`` (process ``pid``) is about to generate ``keys``."""
        self._started[replica][pid].update(keys)

    def finish(self, replica: str, pid: int, keys: list[str]) -> None:
        """The results of ``keys`` have been sent to the driver."""
        held = self._started.get(replica, {}).get(pid)
        if held is not None:
            held.difference_update(keys)

    def take(self, replica: str, pid: Optional[int]) -> list[str]:
        """The rows process ``pid`` of ``replica`` had started and not finished; forgets the replica's
        entries (a dead process will not finish them; a newer one's rows are not tracked by the driver)."""
        by_pid = self._started.pop(replica, {})
        return sorted(by_pid.get(pid, set())) if pid is not None else sorted(set().union(*by_pid.values()))


def start_ledger() -> Any:
    """A ledger actor on the driver's node, reserving no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}
    try:
        node = ray.get_runtime_context().get_node_id()
        # hard: a soft affinity was seen to land it on a worker node, which takes the ledger along
        # when that node leaves (the driver's own node going means the driver is gone anyway)
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    except Exception:  # Ray Client drivers have no node of their own
        pass
    return ray.remote(RowLedger).options(**options).remote()

