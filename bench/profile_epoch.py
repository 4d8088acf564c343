"""Where one epoch's time goes: cProfile of the rendered project's training and of the bare loop.

    python bench/profile_epoch.py [--out DIR] [--top K] [--device cpu|cuda] [--no-bare] [--dump DIR]

Renders the default project and writes the full-size data as bench/bench.py does (default
out: build/bench-profile), then, in this process, under cProfile:
  * ours: the project's `train.main()` with `-c config.json -o trainer.epochs=1
    -o data_loader.args.data_dir=... --run-id profile`, default config otherwise (progress
    bars, metrics, validation, TensorBoard, metrics.csv and checkpoints on). The project's
    modules are imported before profiling starts; what train() does (config, data decoding,
    model, run directory, TensorBoard import, one epoch, bookkeeping) is profiled.
  * bare: bench.bare_worker (bench.BareLoop) for one epoch (data decoding included).
For each it prints the wall time, the epoch split measured with bench.py's timers (ours), and
the top K functions by cumulative time and by own (total) time. `--dump DIR` also saves the raw
profiles as DIR/ours.prof and DIR/bare.prof (pstats files, e.g. for snakeviz).

cProfile adds a cost to every Python call, so Python-heavy code (the DataLoader's per-sample
fetch and collate, tqdm) looks more expensive here than it is; compare with bench.py's figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # importing bench.py must leave no __pycache__ in the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (this folder is not a package)

DEFAULT_OUT = bench.REPO / "build" / "bench-profile"


def print_stats(profile: cProfile.Profile, top: int) -> None:
    for key, title in (("cumulative", "cumulative time"), ("tottime", "own (total) time")):
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream).strip_dirs().sort_stats(key)
        stats.print_stats(top)
        lines = stream.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        print(f"\n-- top {top} by {title}")
        print("\n".join(line for line in lines[start:] if line.strip()))


def dump(profile: cProfile.Profile, directory: Path | None, name: str) -> None:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(directory / name)
        print(f"\nsaved {directory / name}")


def profile_ours(project: Path, data_dir: Path, top: int, dump_dir: Path | None) -> None:
    os.chdir(project)
    sys.path.insert(0, str(project))
    sys.dont_write_bytecode = False  # the project lives under build/, its caches may stay
    import train as train_script  # the project's train.py
    from trainer import Trainer

    timings = bench.install_ours_timers(Trainer)
    argv = bench.ours_train_args(data_dir, 1, "profile")
    print(f"\n==== ours: python train.py {' '.join(argv)}   (in {project}, under cProfile)", flush=True)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    code = train_script.main(argv)
    profile.disable()
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"train.py exited with {code}")
    epochs = bench.summarise_epochs(timings["records"], timings["train_end"])
    print(
        f"\nours under cProfile: train.main() {wall:.2f} s; epoch "
        + ", ".join(f"{key} {value:.2f} s" for key, value in epochs[0].items())
    )
    print_stats(profile, top)
    dump(profile, dump_dir, "ours.prof")


def profile_bare(data_dir: Path, device: str, top: int, dump_dir: Path | None) -> None:
    print(f"\n==== bare: bench.bare_worker({str(data_dir)!r}, 1, {device!r})   (under cProfile)", flush=True)
    timings = data_dir.parent / "bare-profile.json"
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    bench.bare_worker(str(data_dir), 1, device, str(timings))
    profile.disable()
    wall = time.perf_counter() - start
    epoch = json.loads(timings.read_text())["epochs"][0]
    print(
        f"\nbare under cProfile: bare_worker() {wall:.2f} s; epoch "
        + ", ".join(
            f"{key} {value:.2f}" + (" s" if key in ("total", "train", "valid", "other") else "")
            for key, value in epoch.items()
        )
    )
    print_stats(profile, top)
    dump(profile, dump_dir, "bare.prof")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    parser.add_argument("--top", type=int, default=25, help="functions listed per table (default 25)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    parser.add_argument("--no-bare", action="store_true", help="profile ours only")
    parser.add_argument("--dump", type=Path, help="also save the raw profiles (ours.prof, bare.prof) here")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: n_gpu 1 falls back to the CPU, as in bench.py

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    print(f"machine: {bench.machine(device, None)}")
    print(f"load:    {bench.load_average()} (1, 5, 15 min)")
    dump_dir = args.dump.resolve() if args.dump is not None else None
    project, data_dir = bench.prepare(args.out.resolve())
    if not args.no_bare:
        profile_bare(data_dir, device, args.top, dump_dir)
    profile_ours(project, data_dir, args.top, dump_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
