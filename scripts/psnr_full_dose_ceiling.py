"""How far PSNR vs the full dose can rank denoisers: the noise-free image's score beside the raw input's.

::

    python scripts/psnr_full_dose_ceiling.py benchmarks/.cache/data/ribosome-1024px-12mic-seed0-* 010,020,060

The simulated doses are nested: the full-dose image holds each lower dose's own shot noise. The noise-free image is
what a perfect denoiser would return, so its PSNR vs the full dose is the most a denoiser can score in expectation;
where the raw input scores above it (doses above about half), the metric rewards keeping the input's noise and cannot
rank denoisers (benchmarks/README.md, session 17). Scored like the benchmark (:func:`cryojoint.metrics.denoising.psnr`,
affine fit) on the dataset's test micrographs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from cryojoint.io.mrc import read_micrograph  # noqa: E402
from cryojoint.metrics.denoising import psnr  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    root, doses = Path(argv[0]), argv[1].split(",")
    names = json.loads((root / "benchmark_dataset.json").read_text())["test_names"]
    full = {n: read_micrograph(root / "dose_100" / f"{n}.mrc").data for n in names}
    clean = np.mean([psnr(read_micrograph(root / "clean" / f"{n}.mrc").data, full[n]) for n in names])
    print(f"{root.name}: PSNR vs full dose (dB), mean over {len(names)} test micrographs")
    print(f"  noise-free image: {clean:.2f}")
    for dose in doses:
        raw = np.mean([psnr(read_micrograph(root / f"dose_{dose}" / f"{n}.mrc").data, full[n]) for n in names])
        print(f"  raw input at {dose}: {raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
