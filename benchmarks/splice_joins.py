"""How abrupt the joins of the splice attacks are: A8 (butt joins) against A9 (aligned + crossfaded), on
real speech (Asterisk en_US prompts), measured by slimtrain.tasks.spoof.splice.join_discontinuity (peak
|second difference| at the join over its local median; "anywhere" = the same measure at random points of
the A9 audio, what a join as smooth as the speech gives).

    python benchmarks/splice_joins.py --splices 40
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import ROOT  # noqa: F401  (puts src/ on the path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splices", type=int, default=40)
    p.add_argument("--prompts", type=int, default=60)
    p.add_argument("--smooth-ms", type=float, default=10.0)
    a = p.parse_args(argv)
    from slimtrain.tasks.audio import asterisk_prompts, read_audio
    from slimtrain.tasks.spoof.splice import join_discontinuity, splice

    xs = [read_audio(f, 8000)[0] for f in asterisk_prompts("en")[: a.prompts]]
    rng = np.random.default_rng(0)
    hard, soft, anywhere, joins = [], [], [], 0
    for i in range(a.splices):
        srcs = [xs[int(j)] for j in rng.choice(len(xs), 4, replace=False)]
        h, s = splice(srcs, i), splice(srcs, i, smooth_ms=a.smooth_ms)
        hard.append(join_discontinuity(h.audio, h.joins))
        soft.append(join_discontinuity(s.audio, s.joins))
        anywhere.append(join_discontinuity(s.audio, rng.integers(100, len(s.audio) - 100, 20)))
        joins += len(h.joins)
    print(f"{a.splices} splices of 1.6 s from {len(xs)} en_US prompts, {joins} joins (A8)")
    print(f"  join discontinuity A8 butt joins      {np.mean(hard):6.2f}")
    print(f"  join discontinuity A9 smoothed joins  {np.mean(soft):6.2f}  (A8 / A9 = {np.mean(hard) / np.mean(soft):.1f}x)")
    print(f"  same measure anywhere in A9 audio     {np.mean(anywhere):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
