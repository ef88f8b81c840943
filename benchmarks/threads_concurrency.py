"""Two runs on one machine (CPU): what a thread budget per run (`tagseg --threads`) buys.

    .venv/bin/python benchmarks/threads_concurrency.py [--steps 6 --batch 4 --crop 320]

The same fixed workload (DeepLabV2 training steps on random inputs, as benchmarks/deeplab_step.py)
runs in fresh processes: one alone with the default budget (every core), two at once with the
default budget each (oversubscribed), and two at once with each given its share
(`--threads cores/2`, what TAGSEG_THREADS sets). Reports each process's seconds per step, its
slowdown against running alone, and the pair's total throughput. OMP_NUM_THREADS and friends are
removed from the workers' environment, as on a user's machine. Writes
benchmarks/results/threads_concurrency.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import ROOT, write_result
from tagseg.threads import available_cores

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TAGSEG_THREADS")


def worker(threads: int | None, steps: int, batch: int, crop: int) -> None:
    """Time ``steps`` DeepLabV2 training steps (channels-last, after a warm-up) under the thread budget
    ``threads``; print seconds per step as JSON."""
    import torch

    from deeplab_step import step_seconds
    from tagseg.threads import set_threads

    set_threads(threads)
    print(json.dumps({"seconds_per_step": step_seconds("deeplabv2", True, batch, crop, steps),
                      "torch_threads": torch.get_num_threads()}))


def launch(count: int, threads: int | None, args) -> list[dict]:
    """Start ``count`` workers at once and wait for all; their JSON lines."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--batch", str(args.batch),
               "--crop", str(args.crop)] + ([] if threads is None else ["--threads", str(threads)])
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"worker failed with exit status {process.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads_concurrency.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.threads, args.steps, args.batch, args.crop)
        return
    cores = available_cores()
    share = max(1, cores // 2)
    alone = launch(1, None, args)[0]["seconds_per_step"]
    rows = [{"setting": "one run, default budget", "processes": 1, "threads_each": cores, "seconds_per_step": [alone]}]
    for name, threads in (("two runs, default budget each", None), (f"two runs, --threads {share} each", share)):
        results = launch(2, threads, args)
        rows.append({"setting": name, "processes": 2, "threads_each": results[0]["torch_threads"],
                     "seconds_per_step": [r["seconds_per_step"] for r in results]})
    for row in rows:
        row["slowdown_vs_alone"] = [round(s / alone, 2) for s in row["seconds_per_step"]]
        row["steps_per_second_total"] = round(sum(1 / s for s in row["seconds_per_step"]), 3)
        row["seconds_per_step"] = [round(s, 3) for s in row["seconds_per_step"]]
    lines = [f"DeepLabV2 training steps, batch {args.batch}, {args.crop} px crops, {args.steps} timed steps per "
             f"process; {cores} cores.", "",
             "| setting | threads each | s / step (each process) | slowdown vs alone | steps / s (all) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['threads_each']} | {', '.join(map(str, r['seconds_per_step']))} | "
              f"{', '.join(f'{x}x' for x in r['slowdown_vs_alone'])} | {r['steps_per_second_total']} |" for r in rows]
    write_result(args.out, {"command": " ".join(sys.argv), "cores": cores, "steps": args.steps, "batch": args.batch,
                            "crop": args.crop, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
