"""A non-editable install (as in the Docker image) carries every product module and the default config files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "models", "streaming", "trainer")


def test_wheel_holds_every_module_and_config_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("corestream-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json"} and "__pycache__" not in path.parts
    }
    assert "streaming/sinks/elasticsearch.py" in wanted
    assert wanted - in_wheel == set()
