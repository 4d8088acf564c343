"""MLflow: every training run is also an MLflow run, a mirror of its metrics.csv.

One run folder is one MLflow run: its id is kept in the folder's `mlflow_run.json`, so that a
resumed process (after SIGTERM, a kill -9 or a stop inside an epoch) reopens it. What the MLflow
run holds is always brought up to date from the run folder, never counted in this process: at
the start and after every epoch's save, MLflow is asked which epochs it holds and is sent the
rows of metrics.csv it lacks (one value per epoch, step = epoch), then the resolved config as
parameters, the tags, and the folder's small files as artifacts. A store that does not answer
costs one warning; training goes on, and what it missed is sent when it answers again.

`mlflow` is imported only by `connect` (it takes seconds), so a run that does not track never
pays for it. logger/epoch_writer.py is the one user of this module.
"""

import contextlib
import getpass
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from logger.metrics_csv import epoch_ranges
from utils.errors import InputError, TrainingInterrupted, first_line
from utils.staged_files import write_atomic

logger = logging.getLogger("trainer")

RUN_ID_FILE = "mlflow_run.json"  # in the run folder: which MLflow run mirrors it
DATABASE = "mlflow.db"  # the default store, in trainer.save_dir beside the runs
ARTIFACT_ROOT = "mlartifacts"  # beside a SQLite store: the artifacts of its runs
ARTIFACTS = ("config.json", "run_info.json", "metrics.csv")
CHECKPOINT = "model_best.pth"  # also an artifact with trainer.mlflow.log_checkpoints
# While we talk to the store (a variable the user set wins): MLflow's HTTP client, which retries a
# request for minutes by default, gives up within seconds (what is not sent now is sent later),
# and it prints no links of its own to stdout (the run's log names the run).
QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# MLflow's limits (since 2.8): values are cut to these lengths, batches to these sizes.
PARAM_LENGTH, TAG_LENGTH, PARAMS_PER_BATCH, METRICS_PER_BATCH = 6000, 8000, 100, 1000
# Libraries whose log lines about a store that does not answer would repeat at every epoch end.
QUIETED = ("mlflow", "urllib3", "alembic")


def tracking_uri(options: dict[str, Any], save_dir: str) -> str:
    """Where runs are tracked: `trainer.mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else the
    SQLite database `<save_dir>/mlflow.db` (an absolute path: the same store from any folder)."""
    if options["tracking_uri"]:
        return options["tracking_uri"]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return default_uri(save_dir)


def default_uri(save_dir: str) -> str:
    """The SQLite database beside the runs: `sqlite:////<absolute save_dir>/mlflow.db`."""
    return "sqlite:///" + quote(str(Path(save_dir).resolve() / DATABASE))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].partition("?")[0]))


OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")  # the OS's words inside MLflow's message


def reason(exc: BaseException) -> str:
    """Why a store did not answer, short: the OS's words (`Connection refused`) where the
    message holds them (MLflow wraps them in a long text), else its first line."""
    found = OS_ERROR.findall(str(exc))
    return found[-1].strip() if found else first_line(exc)[:300]


def answered(exc: BaseException) -> bool:
    """Whether `exc` is MLflow's own refusal (a store it will not use, such as a folder of files),
    rather than a store that could not be reached."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and not OS_ERROR.search(str(exc))


def connect(options: dict[str, Any], save_dir: str, experiment: str) -> "MlflowTracker":
    """A tracker for the store that the options name, checked now, before any run folder exists:
    a store that does not answer (or a database that could not be created) is an InputError,
    and nothing is created. A SQLite database that does not exist yet is created by the run."""
    try:
        import mlflow.tracking  # noqa: F401  (first: it configures its loggers, which quick_requests quiets)
    except ImportError as exc:
        raise InputError(f"trainer.mlflow: MLflow is not installed ({exc}); pip install -r requirements.txt, or "
                         "train without tracking: -o trainer.mlflow.enabled=false") from None
    uri = tracking_uri(options, save_dir)
    tracker = MlflowTracker(uri, experiment, options["log_checkpoints"])
    remedy = ("start it, or name another store in trainer.mlflow.tracking_uri (or MLFLOW_TRACKING_URI), or train "
              "without tracking: -o trainer.mlflow.enabled=false")
    database = sqlite_file(uri)
    if database is not None and not database.exists():
        # made when the run starts; the default one beside the runs, whose folder the run folder's
        # creation checks first and names in its error, needs no look now
        folder = next(parent for parent in database.absolute().parents if parent.exists())
        usable = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
        if not usable and uri != default_uri(save_dir):
            raise InputError(f"trainer.mlflow: cannot create the MLflow database {database} ({folder} is not a "
                             f"writable folder); {remedy}")
        return tracker
    if "://" not in uri and uri.endswith((".db", ".sqlite")):  # MLflow reads a plain path as a folder store
        raise InputError(f"trainer.mlflow: tracking_uri {uri!r} is a path, which MLflow takes for a folder of "
                         f"files; for a SQLite database write it as sqlite:///{Path(uri).absolute()} (or train without "
                         "tracking: -o trainer.mlflow.enabled=false)")
    try:
        with quick_requests():
            found = tracker.client().get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001  (whatever the store's client raises: it did not answer)
        if not answered(exc):
            raise InputError(f"trainer.mlflow: the MLflow store {uri} does not answer ({reason(exc)}); {remedy}") \
                from None
        raise InputError(f"trainer.mlflow: MLflow refuses the store {uri}: {first_line(exc)[:600]}; or train "
                         "without tracking: -o trainer.mlflow.enabled=false") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise InputError(f"trainer.mlflow: experiment '{experiment}' is deleted in {uri}; restore it (mlflow "
                         "experiments restore) or choose another trainer.mlflow.experiment")
    return tracker


@contextlib.contextmanager
def quick_requests() -> Iterator[None]:
    """For the calls inside: MLflow's HTTP requests give up within seconds (QUICK_REQUESTS), and
    the retry and progress lines of MLflow and its libraries stay out of the console (the
    tracker says in one line what went wrong)."""
    added = {name: value for name, value in QUICK_REQUESTS.items() if name not in os.environ}
    os.environ.update(added)
    loggers = [logging.getLogger(name) for name in QUIETED]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def mlflow_name(key: str) -> str:
    """`key` as MLflow accepts a metric, parameter or tag name (letters, digits and `_-. /:`)."""
    return re.sub(r"[^\w\-. /:]", "_", key)


def param_values(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key -> value as text (JSON's spelling: `true`, `null`, `[...]`) of every leaf of
    `config`, each cut to MLflow's length limit."""
    values: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            values.update(param_values(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            values[mlflow_name(prefix + key)] = text[:PARAM_LENGTH]
    return values


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class MlflowTracker:
    """The MLflow run of one run folder (on the process that writes it: rank 0 under DDP).

    `start` opens it; `sync`, after each epoch's save, sends what it lacks; `finish` marks how
    the process ended. None of them raises: a store that does not answer is one warning, said
    again only after it has answered in between, and everything it missed is sent later.
    """

    def __init__(self, uri: str, experiment: str, log_checkpoints: bool) -> None:
        self.uri, self.experiment, self.log_checkpoints = uri, experiment, log_checkpoints
        self.run_dir = Path()
        self.tags: dict[str, str] = {}
        self.parent: Path | None = None
        self.run_id: str | None = None
        self.experiment_id = ""  # of the run
        self._client: Any = None
        self._described = False  # this process sent the parameters and tags
        self._held: dict[str, set[int]] | None = None  # key -> the steps MLflow holds; None: ask it
        self._uploaded: dict[str, tuple[int, int]] = {}  # artifact -> (mtime, size) this process sent
        self._away = False  # the store did not answer, and was said to

    def client(self) -> Any:
        """The MLflow client of the store (imports mlflow; opening a SQLite store creates it)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient  # here: importing mlflow takes seconds

            database = sqlite_file(self.uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def start(self, run_dir: Path, rows: list[dict[str, str]], tags: dict[str, str],
              parent: Path | None = None) -> None:
        """Open the MLflow run of `run_dir` (reopen the one its mlflow_run.json names, or create
        one, tagged with `tags`; for a branch, with the run folder `parent` it came from) and
        send what it lacks of `rows`, the rows metrics.csv keeps."""
        self.run_dir, self.tags, self.parent = run_dir, tags, parent
        self.sync(rows)
        if self.run_id is not None:
            logger.info("MLflow: run %s in %s", self.run_id, self.where())

    def where(self) -> str:
        """Where to look at the run: its page on a server, else the command that serves the store."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.uri} (experiment '{self.experiment}'); to look: mlflow ui --backend-store-uri " + \
            shlex.quote(self.uri)

    def sync(self, rows: list[dict[str, str]]) -> None:
        """Bring the MLflow run up to date with the run folder: the rows of metrics.csv (`rows`)
        it lacks, the parameters and tags (once a process), the changed artifacts."""
        try:
            with quick_requests():
                self._open_run(rows)
                assert self.run_id is not None
                sent = self._send_rows(rows)
                self._describe()
                self._upload_artifacts()
        except Exception as exc:  # noqa: BLE001  (MLflow mirrors the record: whatever fails, training goes on)
            self._held = None  # a send that failed may have arrived: ask again next time
            if not self._away:
                self._away = True
                logger.warning("MLflow: %s does not answer (%s); training goes on, metrics.csv keeps every epoch, "
                               "and MLflow is sent what it missed once it is back", self.uri, reason(exc))
            return
        if self._away:
            self._away = False
            logger.info("MLflow: %s answers again; sent %d values it had missed", self.uri, sent)

    def finish(self, rows: list[dict[str, str]], error: BaseException | None, discarded: bool = False) -> None:
        """The process ends: the MLflow run is FINISHED, KILLED (a stop by a signal, to be
        resumed) or FAILED as `error` says, after one more sync (what a store that was away
        missed, a file that changed last), or deleted when the run folder is (`discarded`). A
        process told to exit at once (a second Ctrl-C) leaves it as it is."""
        if error is not None and not isinstance(error, Exception):
            return
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, TrainingInterrupted) else "FAILED"
        if not discarded:
            self.sync(rows)
        if self.run_id is None or self._away:
            return
        try:
            with quick_requests():
                if discarded:
                    self.client().delete_run(self.run_id)
                else:
                    self.client().set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001  (the next start sets it again; nothing of the record is lost)
            pass

    # ------------------------------------------------------------------ the steps of a sync
    def _open_run(self, rows: list[dict[str, str]]) -> None:
        """Reopen the run that mlflow_run.json names, if the store has it; else create one."""
        if self.run_id is not None:
            return
        recorded = read_json(self.run_dir / RUN_ID_FILE)
        previous = recorded.get("run_id") if isinstance(recorded, dict) else None
        run = self._active_run(previous) if previous else None
        if run is not None:
            self._held = self._held_steps(previous, rows)
            stale = sorted({step for steps in self._held.values() for step in steps} - epochs(rows))
            if not stale:
                self.client().update_run(previous, status="RUNNING")
                self.run_id, self.experiment_id = previous, run.info.experiment_id
                return
            logger.warning("MLflow: run %s holds epochs %s, which metrics.csv no longer has (to be trained "
                           "again, or taken out of it); a new MLflow run mirrors metrics.csv", previous,
                           epoch_ranges(stale))
            self.tags = {**self.tags, "replaces_run_id": previous}
        elif previous:
            logger.info("MLflow: %s has no run %s (the one this folder was tracked in); a new MLflow run gets "
                        "all its epochs", self.uri, previous)
        self._create_run()

    def _active_run(self, run_id: str) -> Any:
        """The store's run `run_id`; None when it has none (or it was deleted)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client().get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return run if run.info.lifecycle_stage == "active" else None

    def _create_run(self) -> None:
        """A new MLflow run for this folder, its id kept in the folder before anything is sent."""
        client = self.client()
        run = client.create_run(self._experiment_id(), run_name=self.run_dir.name)
        record = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": self.uri}
        try:
            write_atomic((json.dumps(record, indent=4) + "\n").encode(), self.run_dir / RUN_ID_FILE)
        except Exception:
            client.delete_run(run.info.run_id)  # a run no folder names would never be reopened
            raise
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self._held, self._described = {}, False  # a new run holds nothing yet

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        database = sqlite_file(self.uri)
        location = str(database.absolute().parent / ARTIFACT_ROOT) if database is not None else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # another process created it a moment ago
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _held_steps(self, run_id: str, rows: list[dict[str, str]]) -> dict[str, set[int]]:
        """Key -> the steps (epochs) whose value MLflow holds, for every column of `rows`."""
        keys = {mlflow_name(key) for row in rows for key in row if key != "epoch"}
        return {key: {metric.step for metric in self.client().get_metric_history(run_id, key)} for key in keys}

    def _send_rows(self, rows: list[dict[str, str]]) -> int:
        """Send every value of `rows` that MLflow does not hold; returns how many were sent."""
        from mlflow.entities import Metric

        assert self.run_id is not None
        if self._held is None:
            self._held = self._held_steps(self.run_id, rows)
        now = int(time.time() * 1000)
        missing = [Metric(mlflow_name(key), float(cell), now, int(row["epoch"]))
                   for row in rows for key, cell in row.items()
                   if key != "epoch" and cell != "" and int(row["epoch"]) not in self._held.get(mlflow_name(key), ())]
        for first in range(0, len(missing), METRICS_PER_BATCH):
            batch = missing[first:first + METRICS_PER_BATCH]
            self.client().log_batch(self.run_id, metrics=batch)
            for metric in batch:
                self._held.setdefault(metric.key, set()).add(metric.step)
        return len(missing)

    def _describe(self) -> None:
        """Parameters (the resolved config; a value a resume changed is a `resumed_with.<key>`
        tag, since MLflow keeps a parameter's first value) and tags: once a process."""
        from mlflow.entities import Param, RunTag

        if self._described:
            return
        assert self.run_id is not None
        client = self.client()
        config = read_json(self.run_dir / "config.json")
        wanted = param_values(config) if isinstance(config, dict) else {}
        held = client.get_run(self.run_id).data.params
        params = [Param(key, value) for key, value in wanted.items() if key not in held]
        changed = {f"resumed_with.{key}": value for key, value in wanted.items() if held.get(key, value) != value}
        tags = [RunTag(mlflow_name(key), str(value)[:TAG_LENGTH])
                for key, value in {**self._run_tags(), **changed}.items()]
        for first in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[first:first + PARAMS_PER_BATCH])
        for first in range(0, len(tags), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, tags=tags[first:first + PARAMS_PER_BATCH])
        self._described = True

    def _run_tags(self) -> dict[str, str]:
        """The run folder, the command line, user and git commit of this invocation (run_info.json's
        newest entry), the branch's origin, and the caller's tags."""
        tags = {"run_dir": str(self.run_dir)}
        entries = read_json(self.run_dir / "run_info.json")
        newest = entries[-1] if isinstance(entries, list) and entries and isinstance(entries[-1], dict) else {}
        if newest.get("argv"):
            tags["command"] = shlex.join(newest["argv"])
            tags["mlflow.source.name"] = newest["argv"][0]
        with contextlib.suppress(Exception):  # no user name known to the OS: no tag
            tags["mlflow.user"] = getpass.getuser()
        git = newest.get("git")
        if isinstance(git, dict) and git.get("commit"):
            tags["mlflow.source.git.commit"] = git["commit"]
            tags["git_dirty"] = json.dumps(bool(git.get("dirty")))
        if self.parent is not None:
            tags["branched_from"] = str(self.parent)
            parent = read_json(self.parent / RUN_ID_FILE)
            if isinstance(parent, dict) and parent.get("run_id"):
                tags["branched_from_run_id"] = parent["run_id"]
        return {**tags, **self.tags}

    def _upload_artifacts(self) -> None:
        """config.json, run_info.json, metrics.csv (and model_best.pth when asked): each one
        that changed since this process last sent it."""
        assert self.run_id is not None
        names = [*ARTIFACTS, CHECKPOINT] if self.log_checkpoints else list(ARTIFACTS)
        for name in names:
            path = self.run_dir / name
            try:
                stat = path.stat()
            except OSError:
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._uploaded.get(name) != signature:
                self.client().log_artifact(self.run_id, str(path))
                self._uploaded[name] = signature


def epochs(rows: list[dict[str, str]]) -> set[int]:
    """The epochs of metrics.csv's `rows`."""
    return {int(row["epoch"]) for row in rows}
