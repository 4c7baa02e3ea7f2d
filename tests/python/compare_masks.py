"""Compares two folders of class-id mask PNGs written by `edgeseg-run --sink png:DIR`.

usage: compare_masks.py DIR_A DIR_B [MIN_AGREEMENT]

Every file of DIR_A must exist in DIR_B with the same size (as NAME.png, or as
NAME_mask.png the way `edgeseg predict` names masks); prints the pixel
agreement of each pair and exits non-zero if any is below MIN_AGREEMENT (0.999).
"""

import pathlib
import sys

import numpy as np
from PIL import Image


def main() -> int:
    a_dir, b_dir = map(pathlib.Path, sys.argv[1:3])
    minimum = float(sys.argv[3]) if len(sys.argv) > 3 else 0.999
    files = sorted(a_dir.glob("*.png"))
    if not files:
        print(f"{a_dir}: no masks", file=sys.stderr)
        return 1
    worst = 1.0
    for a in files:
        b = b_dir / a.name
        if not b.exists():
            b = b_dir / f"{a.stem}_mask.png"
        if not b.exists():
            print(f"{b}: missing", file=sys.stderr)
            return 1
        x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        if x.shape != y.shape:
            print(f"{a.name}: shapes {x.shape} and {y.shape} differ", file=sys.stderr)
            return 1
        agreement = float((x == y).mean())
        worst = min(worst, agreement)
        print(f"{a.name}: {100 * agreement:.3f}% of pixels agree")
    print(f"{len(files)} masks, lowest agreement {100 * worst:.3f}%")
    return 0 if worst >= minimum else 1


if __name__ == "__main__":
    sys.exit(main())
