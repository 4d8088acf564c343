"""MLflow tracking, with the real MLflow on a SQLite store in a temp folder: a run is an MLflow
run holding its config, every row of metrics.csv (one value per epoch), its tags and files; a
stop inside an epoch, a kill between the save and the send, a branch, a store that goes away,
one that does not answer at the start. Every check of the history compares it with metrics.csv."""

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_ROOT, call_main
from mlflow.tracking import MlflowClient
from test_resume import signal_after

import train
from logger.mlflow_tracker import RUN_ID_FILE, MlflowTracker, default_uri, param_values, tracking_uri
from parse_config import ConfigParser
from utils.errors import TrainingInterrupted

ConfigFactory = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module's runs (creating one takes seconds); each run is found by
    its id."""
    return default_uri(str(tmp_path_factory.mktemp("store")))


@pytest.fixture
def tracked(make_config: ConfigFactory, store: str) -> ConfigFactory:
    """make_config, tracked in `store`."""

    def make(**changes: Any) -> dict[str, Any]:
        config = make_config(**changes)
        config["trainer"]["mlflow"].update(enabled=True, tracking_uri=store)
        return config

    return make


def run_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "saved" / "Mnist_LeNet" / run_id


def mlflow_run_id(folder: Path) -> str:
    return json.loads((folder / RUN_ID_FILE).read_text())["run_id"]


def metrics_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def assert_mirrors_metrics_csv(client: MlflowClient, folder: Path) -> None:
    """The MLflow run of `folder` holds every value of its metrics.csv, exactly, at step = epoch,
    and nothing else: one value per epoch."""
    run_id = mlflow_run_id(folder)
    rows = metrics_rows(folder)
    expected = {key: [(int(row["epoch"]), float(row[key])) for row in rows if row[key]] for key in rows[0]
                if key != "epoch"}
    keys = client.get_run(run_id).data.metrics.keys()
    history = {key: sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))
               for key in keys}
    assert history == expected


def test_a_run_is_an_mlflow_run_with_its_config_metrics_tags_and_files(
    tracked: ConfigFactory, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tracked(trainer__epochs=2)
    config["trainer"]["mlflow"].update(tracking_uri=None, log_checkpoints=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # honoured when the config names no store
    train.train(ConfigParser(config, run_id="plain"))
    folder, client = run_dir(tmp_path, "plain"), MlflowClient(store)
    assert_mirrors_metrics_csv(client, folder)
    run = client.get_run(mlflow_run_id(folder))
    assert run.info.status == "FINISHED" and run.info.run_name == "plain"
    assert client.get_experiment(run.info.experiment_id).name == "Mnist_LeNet"
    params = run.data.params
    assert params["optimizer.args.lr"] == "0.001" and params["trainer.epochs"] == "2"
    assert params["metrics"] == '["accuracy", "top_k_acc"]' and params["lr_scheduler.interval"] == "null"
    assert run.data.tags["run_dir"] == str(folder)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.json", "run_info.json", "metrics.csv", "model_best.pth"}
    copy = client.download_artifacts(run.info.run_id, "metrics.csv", str(tmp_path))
    assert Path(copy).read_bytes() == (folder / "metrics.csv").read_bytes()


def test_the_store_defaults_to_sqlite_beside_the_runs_and_the_environment_and_config_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    off = {"tracking_uri": None}
    assert tracking_uri(off, "saved/") == f"sqlite:///{tmp_path}/saved/mlflow.db"  # absolute: 4 slashes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking_uri(off, "saved/") == "http://tracker:5000"
    assert tracking_uri({"tracking_uri": "http://team:80"}, "saved/") == "http://team:80"


def test_parameters_and_batches_keep_to_mlflows_limits(store: str, tmp_path: Path) -> None:
    """Values cut to 6,000 characters, names MLflow refuses made acceptable, more than 100
    parameters and more than 1,000 values sent in batches it takes."""
    values = param_values({"long": "x" * 7000, "args": {"what?": 1, "many": {f"k{i}": i for i in range(250)}}})
    assert len(values["long"]) == 6000 and values["args.what_"] == "1" and len(values) == 252
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"long": "x" * 7000, "many": {f"k{i}": i for i in range(250)}}))
    rows = [{"epoch": str(epoch), "loss": repr(1 / epoch)} for epoch in range(1, 1501)]
    tracker = MlflowTracker(store, "limits", log_checkpoints=False)
    tracker.start(folder, rows, {})
    client = MlflowClient(store)
    run = client.get_run(mlflow_run_id(folder))
    assert len(run.data.params) == 251 and len(run.data.params["long"]) == 6000
    assert [metric.value for metric in client.get_metric_history(run.info.run_id, "loss")] == [1 / e for e in
                                                                                                range(1, 1501)]


def test_a_stop_inside_an_epoch_and_the_resume_continue_one_mlflow_run(
    tracked: ConfigFactory, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tracked(trainer__epochs=2)
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 17)  # 12 batches an epoch: in epoch 2
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(config, run_id="stopped"))
    folder, client = run_dir(tmp_path, "stopped"), MlflowClient(store)
    first = mlflow_run_id(folder)
    assert client.get_run(first).info.status == "KILLED"
    assert_mirrors_metrics_csv(client, folder)  # epoch 1
    assert train.main(["-r", str(folder / "latest.pth"), "-o", "trainer.epochs=3"]) == 0
    assert mlflow_run_id(folder) == first
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2", "3"]
    assert_mirrors_metrics_csv(client, folder)
    # MLflow keeps a parameter's first value: a value a resume changed is a tag
    assert run.data.params["trainer.epochs"] == "2" and run.data.tags["resumed_with.trainer.epochs"] == "3"
    assert len(client.search_runs([run.info.experiment_id], f"tags.run_dir = '{folder}'")) == 1


def test_a_kill_between_the_save_and_the_send_is_made_up_for_on_resume(
    tracked: ConfigFactory, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a kill -9 right after epoch 2's save: its row is in metrics.csv, not in MLflow, and
    nothing else runs. The resume sends it before it trains epoch 3."""

    class Killed(BaseException):
        pass

    sync, calls = MlflowTracker.sync, 0

    def killed_at_the_second_epoch(self: MlflowTracker, rows: list[dict[str, str]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the start, epoch 1, then epoch 2
            raise Killed
        sync(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowTracker, "sync", killed_at_the_second_epoch)
        patch.setattr(MlflowTracker, "finish", lambda *args: None)  # a killed process ends nothing
        with pytest.raises(Killed):
            train.train(ConfigParser(tracked(trainer__epochs=3), run_id="killed"))
    folder, client = run_dir(tmp_path, "killed"), MlflowClient(store)
    run_id = mlflow_run_id(folder)
    assert [metric.step for metric in client.get_metric_history(run_id, "loss")] == [1]
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2"]
    assert train.main(["-r", str(folder / "latest.pth")]) == 0
    assert mlflow_run_id(folder) == run_id
    assert_mirrors_metrics_csv(client, folder)  # epochs 1 to 3, one value each


def test_epochs_a_resume_trains_again_never_leave_a_stale_value(
    tracked: ConfigFactory, store: str, tmp_path: Path,
) -> None:
    """The run's latest.pth removed by hand: resuming from epoch 1 trains epochs 2 and 3 again,
    which its MLflow run already holds; a new MLflow run then mirrors the folder."""
    train.train(ConfigParser(tracked(trainer__epochs=3), run_id="again"))
    folder, client = run_dir(tmp_path, "again"), MlflowClient(store)
    old = mlflow_run_id(folder)
    (folder / "latest.pth").unlink()
    assert train.main(["-r", str(folder / "checkpoint-epoch1.pth")]) == 0
    new = mlflow_run_id(folder)
    assert new != old and client.get_run(new).data.tags["replaces_run_id"] == old
    assert_mirrors_metrics_csv(client, folder)


def test_a_branch_is_a_new_mlflow_run_tagged_with_the_run_and_epoch_it_came_from(
    tracked: ConfigFactory, store: str, tmp_path: Path,
) -> None:
    train.train(ConfigParser(tracked(trainer__epochs=3), run_id="main"))
    folder, client = run_dir(tmp_path, "main"), MlflowClient(store)
    assert train.main(["-r", str(folder / "checkpoint-epoch1.pth")]) == 0
    branch = run_dir(tmp_path, "main-from-epoch1")
    tags = client.get_run(mlflow_run_id(branch)).data.tags
    assert mlflow_run_id(branch) != mlflow_run_id(folder)
    assert (tags["branched_from"], tags["branched_from_epoch"]) == (str(folder), "1")
    assert tags["branched_from_run_id"] == mlflow_run_id(folder)
    assert_mirrors_metrics_csv(client, branch)  # epoch 1 carried over, 2 and 3 trained again
    assert_mirrors_metrics_csv(client, folder)  # the run's own MLflow run as it was


def test_a_store_that_goes_away_costs_one_warning_and_gets_what_it_missed(
    tracked: ConfigFactory, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store does not answer after epoch 1 until epoch 4 ends: training goes on, one warning
    in train.log, and at epoch 4's end MLflow gets epochs 2 to 4."""
    log_batch, calls = MlflowClient.log_batch, {"n": 0}

    def away_for_a_while(self: MlflowClient, run_id: str, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("metrics"):
            calls["n"] += 1
            if calls["n"] in (2, 3):  # epochs 2 and 3
                raise ConnectionError("[Errno 111] Connection refused")
        log_batch(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", away_for_a_while)
    train.train(ConfigParser(tracked(trainer__epochs=4), run_id="away"))
    folder, client = run_dir(tmp_path, "away"), MlflowClient(store)
    log = (folder / "train.log").read_text()
    assert log.count("does not answer (Connection refused); training goes on") == 1
    assert log.count("answers again; sent ") == 1
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2", "3", "4"]
    assert_mirrors_metrics_csv(client, folder)


STORES = {  # where: (tracking_uri, what the line says)
    "server": ("http://127.0.0.1:9", "does not answer (Connection refused)"),
    "database": ("sqlite:///{tmp}/a_file/mlflow.db", "is not a writable folder"),
    # MLflow (3) will not use a folder of files unless told to: its own reason, whole
    "files": ("file://{tmp}/mlruns", "MLflow refuses the store file://{tmp}/mlruns: The filesystem tracking backend"),
    "path": ("{tmp}/mlflow.db", "is a path, which MLflow takes for a folder of files; for a SQLite database write it "
                                "as sqlite:///{tmp}/mlflow.db"),
}


def refuses_file_stores(folder: Path) -> bool:
    try:
        MlflowClient(tracking_uri=folder.as_uri()).get_experiment_by_name("probe")
    except Exception:  # noqa: BLE001
        return True
    return False


@pytest.mark.parametrize("where", list(STORES))
def test_a_store_that_does_not_answer_at_the_start_is_one_line_and_nothing_is_created(
    tracked: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a setting of the user's is kept
    (tmp_path / "a_file").write_text("not a folder\n")
    uri, said = (text.format(tmp=tmp_path) for text in STORES[where])
    if where == "files" and not refuses_file_stores(tmp_path / "probe"):
        pytest.skip("this MLflow (before 3) still uses a folder of files")
    config = tracked()
    config["trainer"]["mlflow"]["tracking_uri"] = uri
    (tmp_path / "config.json").write_text(json.dumps(config))
    before = sorted(tmp_path.rglob("*"))
    status, out, err = call_main(train.main, ["-c", str(tmp_path / "config.json")], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: trainer.mlflow: "), err
    assert said in err
    assert "trainer.mlflow.enabled=false" in err and "Traceback" not in out + err
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, no database


def test_a_run_without_tracking_and_a_dry_run_never_import_mlflow(tracked: ConfigFactory, tmp_path: Path) -> None:
    """Importing mlflow takes seconds: only a tracked run pays for it."""
    config = tracked(trainer__epochs=1)
    config["trainer"]["mlflow"]["tracking_uri"] = "http://127.0.0.1:9"  # a dry run does not connect
    (tmp_path / "tracked.json").write_text(json.dumps(config))
    config["trainer"]["mlflow"]["enabled"] = False
    (tmp_path / "off.json").write_text(json.dumps(config))
    program = ("import sys, train; "
               f"dry = train.main(['-c', {str(tmp_path / 'tracked.json')!r}, '--dry-run']); "
               f"off = train.main(['-c', {str(tmp_path / 'off.json')!r}]); "
               "print('statuses', dry, off, 'mlflow imported' if 'mlflow' in sys.modules else 'mlflow not imported')")
    result = subprocess.run([sys.executable, "-c", program], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert "statuses 0 0 mlflow not imported" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (tmp_path / "saved" / "mlflow.db").exists()

