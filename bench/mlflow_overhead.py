"""What MLflow tracking costs a run of a project rendered with mlflow=yes, timed in fresh processes:

    python bench/mlflow_overhead.py [--epochs N] [--repeats R] [--no-server]

- import: `import mlflow.tracking` after torch (what a tracked run adds to its start; a run
  without tracking never imports it), the median of R fresh processes;
- store: opening the SQLite store beside the runs, the first time (it is created) and then;
- per epoch: what the tracker does after each epoch's save (`MlflowTracker.sync`: MLflow's
  missing row of metrics.csv, the changed metrics.csv as an artifact), the median over N epochs
  of 8 metrics, on the SQLite store and (unless --no-server) on an `mlflow server` started on
  127.0.0.1 with a SQLite store behind it.

Seconds change from run to run on a shared machine: compare them with an epoch's own seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMPORT = "import time, torch; t = time.perf_counter(); import mlflow.tracking; print(time.perf_counter() - t)"

# Runs inside the rendered project: argv = store URI, folder, epochs; prints JSON seconds.
SYNC = """
import json, statistics, sys, time
from pathlib import Path
from logger.mlflow_tracker import MlflowTracker, connect
from logger.metrics_csv import MetricsCSV

uri, folder, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
folder.mkdir(parents=True)
(folder / "config.json").write_text(json.dumps({"name": "bench", "trainer": {"epochs": epochs, "lr": 0.001}}))
options = {"enabled": True, "tracking_uri": uri, "experiment": None, "log_checkpoints": False}
t = time.perf_counter()
tracker = connect(options, str(folder.parent), "bench")
csv = MetricsCSV(folder / "metrics.csv")
tracker.start(folder, csv.rows, {})
opened = time.perf_counter() - t
keys = ["loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc", "lr"]
seconds = []
for epoch in range(1, epochs + 1):
    csv.write({"epoch": epoch, **{key: 1.0 / (epoch + i) for i, key in enumerate(keys)}})
    t = time.perf_counter()
    tracker.sync(csv.rows)
    seconds.append(time.perf_counter() - t)
tracker.finish(csv.rows, None)
print(json.dumps({"open": opened, "per_epoch": statistics.median(seconds)}))
"""


def render(out: Path) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(cookiecutter(str(REPO), no_input=True, output_dir=str(out), extra_context={"mlflow": "yes"}))


def python(project: Path, program: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", program, *args], cwd=project, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("mlflow server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="leave out the mlflow server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        project = render(root / "project")
        imports = [float(python(project, IMPORT)) for _ in range(args.repeats)]
        print(f"import mlflow.tracking after torch: {statistics.median(imports):.2f} s (median of {args.repeats})")
        stores = {"sqlite (new)": f"sqlite:///{root / 'saved' / 'mlflow.db'}"}
        stores["sqlite (existing)"] = stores["sqlite (new)"]
        server = None
        if not args.no_server:
            server, stores["mlflow server (http)"] = start_server(root)
        try:
            for number, (name, uri) in enumerate(stores.items()):
                result = json.loads(python(project, SYNC, uri, str(root / "saved" / f"run{number}"), str(args.epochs)))
                print(f"{name}: open {result['open']:.2f} s, per epoch {result['per_epoch'] * 1000:.1f} ms "
                      f"(median of {args.epochs})")  # fmt: skip
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait()


if __name__ == "__main__":
    main()
