"""Updating a generated project from a newer template with cruft: `cruft create`, a user's edits,
a second template commit that changes an engine file and adds one, `cruft update` keeping every
edit, `cruft check`; `cruft link` for a project made with plain cookiecutter; renders that are
the same wherever they are made; the template version recorded in the project and the changelog."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from conftest import TEMPLATE, files_of, render_into

SLUG_DIR = "{{cookiecutter.project_slug}}"
# An engine file that a template release changes, and the file it adds.
ENGINE_FILE = "engine/checkpoint.py"
ADDED_FILE = "engine/added_in_1_1.py"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Template Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,  # no user's git settings (signing, hooks, default branch names)
}


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **GIT_ENV}
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def cruft(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "cruft", *args, cwd=cwd)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run("git", *args, cwd=cwd)


def template_repository(folder: Path) -> Path:
    """A git repository holding the template (its cookiecutter.json, hooks and project folder) at one commit."""
    folder.mkdir()
    shutil.copy2(TEMPLATE / "cookiecutter.json", folder)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
    for name in ("hooks", SLUG_DIR):
        shutil.copytree(TEMPLATE / name, folder / name, ignore=ignore)
    git("init", "-q", "-b", "main", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "-q", "-m", "template 1.0", cwd=folder)
    return folder


def release_1_1(template: Path) -> None:
    """A second template commit: an engine file changes at its top and its end, a file is added,
    the version goes up."""
    engine = template / SLUG_DIR / ENGINE_FILE
    text = engine.read_text()
    first = text.splitlines()[0]
    engine.write_text(
        text.replace(first, first.replace('"""', '"""(1.1) ', 1), 1)
        + '\n\ndef added_in_1_1() -> int:\n    """A function of the new release."""\n    return 11\n'
    )
    (template / SLUG_DIR / ADDED_FILE).write_text('"""A module of the new release."""\n')
    pyproject = template / SLUG_DIR / "pyproject.toml"
    pyproject.write_text(re.sub(r'template_version = "[^"]+"', 'template_version = "1.1.0"', pyproject.read_text()))
    git("add", "-A", cwd=template)
    git("commit", "-q", "-m", "template 1.1", cwd=template)


USER_MODEL = '"""My model."""\n\nfrom torch import nn\n\n\nclass Mine(nn.Module):\n    pass\n'


def make_user_edits(project: Path) -> None:
    """What a user does in the first weeks: a new model file, a changed config value, an edited
    trainer method; committed."""
    (project / "model" / "my_model.py").write_text(USER_MODEL)
    config = project / "config.json"
    config.write_text(config.read_text().replace('"epochs": 10,', '"epochs": 30,', 1))
    trainer = project / "trainer" / "trainer.py"
    trainer.write_text(trainer.read_text().replace("output = self.model(data)", "output = self.model(data)  # mine", 1))
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "my changes", cwd=project)


def assert_user_edits_kept(project: Path) -> None:
    assert (project / "model" / "my_model.py").read_text() == USER_MODEL
    assert '"epochs": 30,' in (project / "config.json").read_text()
    assert "output = self.model(data)  # mine" in (project / "trainer" / "trainer.py").read_text()


def assert_template_change_applied(project: Path) -> None:
    engine = (project / ENGINE_FILE).read_text()
    assert engine.startswith('"""(1.1) ') and "def added_in_1_1() -> int:" in engine
    assert (project / ADDED_FILE).is_file()
    assert 'template_version = "1.1.0"' in (project / "pyproject.toml").read_text()


def assert_no_conflicts(project: Path) -> None:
    status = git("status", "--porcelain", cwd=project).stdout.splitlines()
    assert not [line for line in status if line[:2] in ("UU", "AA", "DU", "UD")], status
    assert not list(project.rglob("*.rej")) and not list(project.rglob("*.orig"))
    for name in files_of(project):
        if not name.startswith(".git/"):
            text = (project / name).read_text(errors="replace")
            assert "<<<<<<<" not in text and ">>>>>>>" not in text, name
    changed = {line[3:] for line in status}
    assert changed <= {".cruft.json", "pyproject.toml", ENGINE_FILE, ADDED_FILE}, changed


def test_cruft_update_brings_a_template_change_and_keeps_the_users_edits(tmp_path: Path) -> None:
    template = template_repository(tmp_path / "template")
    cruft("create", str(template), "--no-input", "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    project = tmp_path / "out" / "mnist_classifier"
    assert (project / ".cruft.json").is_file()
    git("init", "-q", "-b", "main", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "generated", cwd=project)
    make_user_edits(project)
    cruft("check", cwd=project)  # up to date

    release_1_1(template)
    outdated = subprocess.run(
        [sys.executable, "-m", "cruft", "check"], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert outdated.returncode != 0  # the project knows that a newer template exists
    cruft("update", "--skip-apply-ask", cwd=project)
    assert_no_conflicts(project)
    assert_user_edits_kept(project)
    assert_template_change_applied(project)
    cruft("check", cwd=project)


def test_cruft_link_adopts_a_project_made_with_plain_cookiecutter(tmp_path: Path) -> None:
    template = template_repository(tmp_path / "template")
    first_commit = git("rev-parse", "HEAD", cwd=template).stdout.strip()
    project = render_into(tmp_path / "out", {})
    git("init", "-q", "-b", "main", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "generated with cookiecutter", cwd=project)
    make_user_edits(project)
    release_1_1(template)
    cruft("link", str(template), "--no-input", "--checkout", first_commit, cwd=project)  # generated from 1.0
    git("add", ".cruft.json", cwd=project)
    git("commit", "-q", "-m", "linked to the template", cwd=project)
    cruft("update", "--skip-apply-ask", "--checkout", "main", cwd=project)
    assert_no_conflicts(project)
    assert_user_edits_kept(project)
    assert_template_change_applied(project)


def test_rendering_is_the_same_wherever_it_is_made(tmp_path: Path) -> None:
    """No timestamp, path of this machine or random value in a generated file: otherwise every
    `cruft update` would report changes (and conflicts) in files nobody touched."""
    first = render_into(tmp_path / "one", {})
    copy = template_repository(tmp_path / "template-clone")  # as cruft renders it: from a clone elsewhere
    second = Path(cookiecutter(str(copy), no_input=True, output_dir=str(tmp_path / "somewhere" / "else")))
    assert files_of(first) == files_of(second)
    for name in sorted(files_of(first)):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def changelog_versions() -> list[str]:
    return re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", (TEMPLATE / "CHANGELOG.md").read_text(), re.MULTILINE)


def test_the_project_records_the_template_version_of_the_newest_changelog_entry() -> None:
    pyproject = (TEMPLATE / SLUG_DIR / "pyproject.toml").read_text()
    recorded = re.search(r'^template_version = "(\d+\.\d+\.\d+)"$', pyproject, re.MULTILINE)
    assert recorded is not None
    versions = changelog_versions()
    assert versions and recorded[1] == versions[0]
    as_numbers = [tuple(int(part) for part in version.split(".")) for version in versions]
    assert as_numbers == sorted(as_numbers, reverse=True) and len(set(as_numbers)) == len(as_numbers)


@pytest.mark.parametrize("answers", [{}, {"dataset": "image_folder", "sweeps": "no"}])
def test_the_recorded_answers_hold_no_path_or_commit(tmp_path: Path, answers: dict[str, str]) -> None:
    project = render_into(tmp_path, answers)
    recorded = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    assert not [key for key in recorded if key.startswith("_")]
    assert {key: recorded[key] for key in answers} == answers
