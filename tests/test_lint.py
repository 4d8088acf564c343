"""The template's own Python (hooks, tests, benchmark, scripts) passes ruff with the root ruff.toml,
which holds the rules and line length of the generated project's pyproject.toml."""

import re
import subprocess
import sys

from conftest import TEMPLATE

LINTED = ("hooks", "tests", "bench", "scripts")


def test_template_code_passes_ruff() -> None:
    for action in (["check"], ["format", "--check"]):  # the rules, and one formatting style
        command = [sys.executable, "-m", "ruff", *action, "--no-cache", *LINTED]
        result = subprocess.run(command, cwd=TEMPLATE, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def ruff_settings(toml: str) -> tuple[str, ...]:
    """The `line-length` and `select` lines of a ruff configuration (TOML; tomllib needs 3.11)."""
    return tuple(re.search(rf"^{key} = (.+)$", toml, re.MULTILINE)[1] for key in ("line-length", "select"))


def test_the_template_is_linted_as_the_generated_project_is() -> None:
    generated = (TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml").read_text()
    assert ruff_settings((TEMPLATE / "ruff.toml").read_text()) == ruff_settings(generated)
