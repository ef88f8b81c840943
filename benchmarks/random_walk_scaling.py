"""Random-walk cost per image: the sparse walk against the dense-squaring reference, time and peak memory.

    .venv/bin/python benchmarks/random_walk_scaling.py

Each measurement runs in a fresh subprocess, so peak RSS (minus the process's RSS just
before the walk) is the walk's own memory. Affinities are random (radius 5, beta 10,
21 classes, logt 8 = 256 steps). The stage walks at stride 4, so a 500x375 image is a
125x94 grid; the full-resolution 1000x750 grid is the stress case. The dense reference runs
only where its N x N matrix fits in memory and finishes within minutes. Writes
benchmarks/results/random_walk_scaling.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, write_result

CASES = [("250x188", 47, 63), ("500x375", 94, 125), ("1000x750", 188, 250), ("1000x750 (full resolution)", 750, 1000)]
DENSE_MAX_PIXELS = 3000  # beyond this the dense reference needs over a GiB and many minutes of CPU

MEASURE = r"""
import json, resource, sys, time
import torch
from tagseg.refine.random_walk import neighbor_offsets, random_walk, random_walk_dense_reference, transition_matrix
method, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
generator = torch.Generator().manual_seed(0)
offsets = neighbor_offsets(5)
affinities = torch.rand((len(offsets), height, width), generator=generator)
scores = torch.rand((21, height, width), generator=generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if method == "sparse":
    out = random_walk(scores, transition_matrix(affinities, offsets, 10.0), 2 ** 8)
else:
    out = random_walk_dense_reference(scores, affinities, offsets, 10.0, 8)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": (peak - before) / 1024, "checksum": float(out.sum())}))
"""


def measure(method: str, height: int, width: int) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, method, str(height), str(width)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "random_walk_scaling.json")
    args = parser.parse_args()
    rows = []
    for label, height, width in CASES:
        row = {"image": label, "grid": f"{width}x{height}", "pixels": height * width,
               "sparse": measure("sparse", height, width)}
        if height * width <= DENSE_MAX_PIXELS:
            row["dense"] = measure("dense", height, width)
            dense_sum, sparse_sum = row["dense"]["checksum"], row["sparse"]["checksum"]
            row["checksums_agree"] = abs(dense_sum - sparse_sum) <= 1e-4 * abs(dense_sum)
        else:
            row["dense"] = {"skipped": f"N x N = {height * width}^2 float32 = "
                                       f"{(height * width) ** 2 * 4 / 2 ** 30:.1f} GiB per matrix"}
        rows.append(row)
        print(row, file=sys.stderr)
    result = {"benchmark": "random_walk_scaling", "radius": 5, "beta": 10, "logt": 8, "classes": 21, "rows": rows}
    lines = ["| image | walk grid | sparse s | sparse peak MiB | dense s | dense peak MiB |", "|---|---|---|---|---|---|"]
    for row in rows:
        dense = row["dense"]
        dense_cells = (f"{dense['seconds']:.2f} | {dense['peak_mib']:.0f}" if "seconds" in dense
                       else f"not run | {dense['skipped']}")
        lines.append(f"| {row['image']} | {row['grid']} | {row['sparse']['seconds']:.2f} | "
                     f"{row['sparse']['peak_mib']:.0f} | {dense_cells} |")
    table = "\n".join(lines) + "\n"
    write_result(args.out, result, table)
    print(table)


if __name__ == "__main__":
    main()
