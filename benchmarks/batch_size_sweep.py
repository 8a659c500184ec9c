r"""Test top-1 against the global batch size: SupCon, SupCon with a momentum queue, and CE.

Runs main.py once per (method, batch size, seed) on configs/digits_small_batch.py with
--config.train.global_batch_size=B (the learning rate scales with B, the epochs stay),
reads each run's results.json, draws test top-1 against B (log scale) and writes a PNG.

  python benchmarks/batch_size_sweep.py                              # 16..256, seed 0
  python benchmarks/batch_size_sweep.py --batch_sizes=16 --seeds=0,1,2,3,4 --plot=
      # the small-batch table: one batch size, five seeds, no plot

Runs that finished are reused (each has its own workdir under --workdir). The last
line is one JSON object with every run's top-1 and the mean per method and batch size.
"""

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/digits_small_batch.py"
# method -> (config argument, overrides); the queue's size is the config's.
METHODS = {
    "supcon": ("", ["--config.loss.queue_size=0"]),
    "supcon_queue": ("", []),
    "ce": (":ce", []),
}
LABELS = {"supcon": "SupCon", "supcon_queue": "SupCon + momentum queue", "ce": "Cross-entropy"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="16,32,64,128,256")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", default="/tmp/batch_size_sweep")
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "batch_size.png"),
                        help="PNG path; empty for no plot")
    return parser.parse_args()


def run(method, batch, seed, workdir):
    """results.json of one run, training it first unless it already finished."""
    run_dir = os.path.join(workdir, f"{method}_b{batch}_s{seed}")
    results_path = os.path.join(run_dir, "results.json")
    if not os.path.exists(results_path):
        config_arg, overrides = METHODS[method]
        command = [sys.executable, "main.py", f"--config={CONFIG}{config_arg}",
                   f"--workdir={run_dir}", f"--config.seed={seed}",
                   f"--config.train.global_batch_size={batch}", *overrides]
        started = time.time()
        with open(os.path.join(workdir, f"{method}_b{batch}_s{seed}.log"), "w") as log:
            subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"{method} batch {batch} seed {seed}: {time.time() - started:.0f} s", flush=True)
    with open(results_path) as f:
        return json.load(f)


def plot(points, path, seeds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for method, by_batch in points.items():
        batches = sorted(by_batch)
        axes.plot(batches, [100 * by_batch[b] for b in batches], marker="o",
                  label=LABELS[method])
    axes.set_xscale("log", base=2)
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.set_xlabel("global batch size (samples; 2 views each)")
    axes.set_ylabel("test top-1 (%)")
    epochs = runpy.run_path(os.path.join(REPO, CONFIG))["get_config"]().train.epochs
    axes.set_title(f"digits, {epochs} epochs at every batch size, seed {seeds}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)


def main(args):
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    top1 = {m: {b: {} for b in batch_sizes} for m in methods}
    for batch in batch_sizes:
        for seed in seeds:
            for method in methods:
                top1[method][batch][seed] = run(method, batch, seed, args.workdir)["top1"]
    means = {m: {b: statistics.mean(top1[m][b].values()) for b in batch_sizes} for m in methods}
    for method in methods:
        for batch in batch_sizes:
            per_seed = " ".join(f"{v:.3f}" for v in top1[method][batch].values())
            print(f"{method:13s} batch {batch:4d}: {per_seed}  mean {means[method][batch]:.3f}")
    if args.plot:
        plot(means, args.plot, ",".join(map(str, seeds)))
    print(json.dumps({
        "benchmark": "batch_size_sweep", "config": CONFIG, "seeds": seeds,
        "top1": {m: {str(b): {str(s): round(v, 4) for s, v in top1[m][b].items()}
                     for b in batch_sizes} for m in methods},
        "mean_top1": {m: {str(b): round(means[m][b], 4) for b in batch_sizes} for m in methods},
        "plot": args.plot or None}))


if __name__ == "__main__":
    main(parse_args())
