"""The files in deploy/ are what docs/deployment.md shows, and each is one its program accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from productflo.cli import _parser
from productflo.settings import Settings
from tests.deploy.conftest import DEPLOY
from tests.test_cli import PRODUCTFLO

GUIDE = DEPLOY.parent / "docs" / "deployment.md"
UNIT = DEPLOY / "systemd" / "productflo@.service"
ENV_FILE = DEPLOY / "systemd" / "productflo.env"
INSTALLED = "/opt/productflo/.venv/bin/productflo"  # where the unit expects the project


def _fenced_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize(
    "path",
    sorted(path for path in DEPLOY.rglob("*") if path.is_file()),
    ids=lambda path: str(path.relative_to(DEPLOY)),
)
def test_the_deployment_guide_shows_each_file_as_it_is(path: Path) -> None:
    assert path.read_text() in _fenced_blocks(GUIDE.read_text()), (
        f"docs/deployment.md does not show {path.relative_to(DEPLOY.parent)} as it is"
    )


def _exec_start() -> list[str]:
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_the_units_command_is_one_productflo_serve_accepts() -> None:
    command = _exec_start()
    assert command[0] == INSTALLED
    arguments = _parser().parse_args([arg.replace("%i", "8001") for arg in command[1:]])
    assert (arguments.run.__name__, arguments.host, arguments.port) == ("_serve", "127.0.0.1", 8001)


def test_systemd_accepts_the_unit(systemd_analyze: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` of an instance, the project's own productflo as its command."""
    unit = tmp_path / "productflo@8001.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, PRODUCTFLO))
    verify = subprocess.run(
        [str(systemd_analyze), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_the_environment_file_sets_settings_the_server_knows() -> None:
    values = dict(
        line.split("=", 1)
        for line in ENV_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    fields = {name.removeprefix("PRODUCTFLO_").lower(): value for name, value in values.items()}
    assert all(name.startswith("PRODUCTFLO_") for name in values), values
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    settings = Settings(**fields)  # type: ignore[arg-type]
    assert settings.database_url is not None and settings.jwt_secret is not None
