"""Rendering: the exact files, no leftover Jinja, the answers recorded, the license option."""

import json
from pathlib import Path

import pytest

from conftest import DEFAULTS, EXPECTED_FILES, Render, files_of, run_python

def test_defaults_render_exactly_the_expected_files(render: Render) -> None:
    project = render()
    assert project.name == "mnist_classifier"
    assert files_of(project) == EXPECTED_FILES


def test_no_jinja_is_left_in_any_file(render: Render) -> None:
    project = render(project_name="Jinja Check", description="tricky {braces} and 'quotes'")
    for name in files_of(project):
        text = (project / name).read_text()
        for marker in ("{{", "{%", "{#"):
            assert marker not in text, f"{name} still holds {marker!r}"


def test_answers_are_recorded_for_later_updates(render: Render) -> None:
    project = render(project_name="Digit Reader", author_name="Ada", license="BSD-3-Clause")
    answers = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]  # replay-file layout
    assert answers["project_name"] == "Digit Reader"
    assert answers["project_slug"] == "digit_reader"
    assert answers["author_name"] == "Ada"
    assert answers["license"] == "BSD-3-Clause"
    assert not any(key.startswith("_output") for key in answers)  # no paths of this machine
    assert "Digit Reader" in (project / "README.md").read_text()
    assert 'name = "digit_reader"' in (project / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("license_name", "expected"),
    [("MIT", "MIT License"), ("BSD-3-Clause", "Redistribution and use in source and binary forms"),
     ("Apache-2.0", "Apache License, Version 2.0"), ("none", None)],
)
def test_license_option_writes_the_right_file(render: Render, license_name: str, expected: str | None) -> None:
    project = render(license=license_name, author_name="Ada Lovelace")
    if expected is None:
        assert not (project / "LICENSE").exists()
        assert files_of(project) == EXPECTED_FILES - {"LICENSE"}
    else:
        text = (project / "LICENSE").read_text()
        assert expected in text and "Ada Lovelace" in text


def test_license_choices_are_the_documented_ones() -> None:
    assert DEFAULTS["license"] == ["MIT", "BSD-3-Clause", "Apache-2.0", "none"]


def test_generated_code_passes_ruff(render: Render) -> None:
    project = render()
    result = run_python(project, "-m", "ruff", "check", "--no-cache", ".", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
