"""Per-module mutation scores from mutmut's results (run by tests/mutation).

A module's score is killed / (killed + survived + no tests): a mutant no test runs would pass every
test, so it counts against the module like a survivor. Mutants not checked yet (an interrupted run)
are shown apart and not scored.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict


def module_of(name: str) -> str:
    for sep in (".xǁ", ".x_"):
        if sep in name:
            return name.split(sep)[0]
    return name


def main() -> int:
    out = subprocess.run(
        [".venv/bin/mutmut", "results", "--all", "true"], capture_output=True, text=True, check=False
    ).stdout
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep:
            continue
        by_module[module_of(name)][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name} ({status})")
    print(f"{'module':<28} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'unchecked':>9} {'score':>6}")
    worst = 100.0
    for module, c in sorted(by_module.items()):
        killed = c["killed"] + c["timeout"]
        judged = killed + c["survived"] + c["no tests"]
        score = f"{100.0 * killed / judged:5.1f}%" if judged else "  -   "
        if judged:
            worst = min(worst, 100.0 * killed / judged)
        print(
            f"{module:<28} {sum(c.values()):>7} {killed:>7} {c['survived']:>8} {c['no tests']:>8} "
            f"{c['not checked']:>9} {score:>6}"
        )
    print(f"not killed: {len(survivors)} (mutmut show NAME for each)")
    for name in survivors:
        print(f"  {name}")
    return 0 if worst >= 90.0 else 1


if __name__ == "__main__":
    sys.exit(main())
