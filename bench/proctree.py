"""CPU time of a whole process tree, for benches that compare Casella with forking servers.

Dovecot forks a process per login and session, Postfix one daemon per role; when a child
exits its time moves into its parent's cutime/cstime. The sum below (each living process's
utime+stime+cutime+cstime, over the tree) therefore grows by exactly the tree's work, so a
before/after difference is what the server spent, live or reaped.
"""
from __future__ import annotations

import os


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and all its descendants (NaN when `root` is gone)."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    if root not in times:
        return float("nan")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")
