"""Per-module mutation scores from mutmut's results (run by tests/mutation)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict


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
        module = name.split(".x_")[0].split(".xǁ")[0]
        by_module[module][status] += 1
        if status == "survived":
            survivors.append(name)
    print(f"{'module':<32} {'mutants':>7} {'killed':>7} {'survived':>8} {'other':>6} {'score':>6}")
    worst = 100.0
    for module, c in sorted(by_module.items()):
        total = sum(c.values())
        killed = c["killed"] + c["timeout"]
        judged = killed + c["survived"]
        score = 100.0 * killed / judged if judged else 100.0
        worst = min(worst, score)
        other = total - judged
        print(f"{module:<32} {total:>7} {killed:>7} {c['survived']:>8} {other:>6} {score:>5.1f}%")
    print(f"survivors: {len(survivors)} (mutmut show NAME for each)")
    for name in survivors:
        print(f"  {name}")
    return 0 if worst >= 90.0 else 1


if __name__ == "__main__":
    sys.exit(main())
