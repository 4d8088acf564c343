"""Finding runs for report.py: the run folders that paths name (a run folder, or a folder of
runs), the folder where a config's runs go, and the sweeps' study folders among them."""

from pathlib import Path

from cli import read_config, with_overrides
from config_schema import validate
from utils.errors import InputError, listed


def runs_folder(config_path: Path, overrides: list[str]) -> Path:
    """`<save_dir>/<name>/` of the config file with `-o` overrides: where train.py puts its runs."""
    config = validate(with_overrides(read_config(config_path), overrides))
    return Path(config["trainer"]["save_dir"]) / config["name"]


def is_study_folder(path: Path) -> bool:
    """A sweep's study folder: `study.db` beside the trials' run folders."""
    return (path / "study.db").is_file()


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def find_runs(paths: list[Path]) -> tuple[list[Path], set[Path]]:
    """The run folders that `paths` name: a run folder itself, or the run folders directly in a
    folder (in name order); and those of them that were named themselves (not found in a folder).
    Anything else is an InputError naming the path."""
    found: list[Path] = []
    named: set[Path] = set()
    for path in paths:
        if is_run_folder(path):
            found.append(path)
            named.add(path)
            continue
        if not path.exists():
            raise InputError(f"'{path}': no such run or folder")
        if not path.is_dir():
            raise InputError(f"'{path}': a file, not a run folder (one holding config.json) or a folder of runs")
        runs = sorted(child for child in path.iterdir() if is_run_folder(child))
        if not runs:
            raise InputError(f"'{path}': not a run folder (no config.json) and holds no run folders"
                             + (studies_hint(path) or experiments_hint(path)))
        found.extend(runs)
    unique = {folder.resolve(): folder for folder in reversed(found)}  # a run named twice counts once
    folders = [folder for folder in found if unique[folder.resolve()] is folder]
    return folders, {folder for folder in folders if folder.resolve() in {path.resolve() for path in named}}


def studies_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(child for child in folder.iterdir() if child.is_dir() and is_study_folder(child))


def studies_hint(folder: Path) -> str:
    """For a message about `folder`: the study folders it holds, and how to report one."""
    studies = studies_in(folder)
    if not studies:
        return ""
    return f"; it holds the studies {listed([s.name for s in studies])}: report one with python report.py {studies[0]}"


def experiments_hint(folder: Path) -> str:
    """For a message about `folder` (a save_dir, say): the folders in it that hold runs (one a
    config `name`), and how to report one."""
    holding = sorted(child for child in folder.iterdir() if child.is_dir()
                     and any(is_run_folder(run) for run in child.iterdir()))
    if not holding:
        return ""
    return (f"; its folders {listed([h.name for h in holding])} hold runs: report one with python report.py "
            f"{holding[0]}")
