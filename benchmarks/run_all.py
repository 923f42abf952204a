"""Run the four benchmarks (and the profile of the first) one after the other and print their tables.

    python benchmarks/run_all.py            # about 5 minutes on a shared 2-core machine
    python benchmarks/run_all.py > benchmarks/latest.txt
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("training_overhead.py", "overhead_parts.py", "graph_breaks.py", "cost_truth.py", "inference_speed.py",
              "vad_streaming.py", "memory.py", "zoo.py")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"## {name}\n", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / name)])
        print(f"\n({name} took {time.perf_counter() - t0:.0f} s, exit {code})\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
