"""The package dependency rule: config <- models <- {trainer, streaming}; checked by reading every import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "models", "trainer", "streaming")

# package (or sub-package) -> project packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "config": {"models", "trainer", "streaming"},
    "models": {"trainer", "streaming"},
    "trainer": {"streaming"},
    "streaming": {"trainer"},
}
# runtimes that wire both sides together (the demo trains a first model)
EXEMPT = ("streaming.apps.demo",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages a module imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


def test_packages_depend_one_way() -> None:
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            if name.startswith(EXEMPT):
                continue
            bad = imported_packages(path) & FORBIDDEN[package]
            violations += [f"{name} imports {other}" for other in sorted(bad)]
    assert not violations, "dependency rule broken:\n" + "\n".join(violations)


@pytest.mark.parametrize(("module", "absent"), [
    ("streaming.pipeline.processor", ["boto3", "trainer"]),
    ("trainer.datasets.build", ["confluent_kafka", "prometheus_client", "streaming"]),
    ("models.inference.predictor", ["confluent_kafka", "prometheus_client", "boto3", "streaming", "trainer"]),
])
def test_importing_a_layer_loads_only_what_it_needs(module: str, absent: list[str]) -> None:
    code = (f"import sys, {module}\n"
            f"loaded = [m for m in {absent!r} if m in sys.modules]\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"
