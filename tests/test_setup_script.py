"""scripts/setup.sh's choice of PyTorch build, run with a fake nvidia-smi, a fake wheel directory and a local index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streaming.apps.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
GPU_LIST = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"


def torch_spec(tmp_path: Path, *, gpu: str | None = None, wheels: Path | None = None, index: str | None = None,
               override: str | None = None) -> tuple[str, str]:
    """(stdout, stderr) of ``torch_spec`` in a shell whose PATH holds only grep and, when ``gpu`` is given, an
    ``nvidia-smi`` that runs that shell snippet."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "grep").unlink(missing_ok=True)
    (bin_dir / "grep").symlink_to(shutil.which("grep") or "/bin/grep")
    if gpu is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{gpu}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": str(bin_dir), "PY": sys.executable, "HOME": str(tmp_path),
           "CORESTREAM_WHEELS": str(wheels or tmp_path / "no-wheels"),
           "CORESTREAM_TORCH_CPU_INDEX": index or f"http://127.0.0.1:{free_port()}/whl/cpu"}
    if override is not None:
        env["CORESTREAM_TORCH"] = override
    done = subprocess.run([BASH, "-c", ". scripts/setup.sh && torch_spec"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A local package index with a page for torch, standing in for download.pytorch.org/whl/cpu."""
    root = tmp_path / "index"
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>torch</a>")
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()
    server.server_close()


def test_no_gpu_takes_the_cpu_index_when_it_answers(tmp_path: Path, cpu_index: str) -> None:
    spec, why = torch_spec(tmp_path, index=cpu_index)
    assert spec == f"torch==2.13.0 --index-url {cpu_index}"
    assert "no NVIDIA GPU: the CPU build" in why


def test_no_gpu_and_no_index_falls_back_to_pypi_with_a_warning(tmp_path: Path) -> None:
    spec, why = torch_spec(tmp_path)
    assert spec == "torch==2.13.0"
    assert "WARNING" in why and "does not answer" in why and "CUDA libraries" in why and "CORESTREAM_TORCH" in why


def test_a_failing_nvidia_smi_is_no_gpu(tmp_path: Path, cpu_index: str) -> None:
    spec, _ = torch_spec(tmp_path, gpu="echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9", index=cpu_index)
    assert spec == f"torch==2.13.0 --index-url {cpu_index}"


def test_a_gpu_host_takes_pypi_s_cuda_build(tmp_path: Path, cpu_index: str) -> None:
    spec, why = torch_spec(tmp_path, gpu=f"echo '{GPU_LIST}'", index=cpu_index)
    assert spec == "torch==2.13.0"
    assert "NVIDIA GPU found" in why


def test_a_local_wheel_comes_first_and_the_override_before_it(tmp_path: Path, cpu_index: str) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    for gpu in (None, f"echo '{GPU_LIST}'"):
        spec, why = torch_spec(tmp_path, gpu=gpu, wheels=wheels, index=cpu_index)
        assert spec == f"torch==2.13.0 --find-links {wheels}"
        assert "local wheel" in why
    custom = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    assert torch_spec(tmp_path, wheels=wheels, override=custom)[0] == custom


def test_a_wheel_of_another_version_is_not_used(tmp_path: Path, cpu_index: str) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert torch_spec(tmp_path, wheels=wheels, index=cpu_index)[0] == f"torch==2.13.0 --index-url {cpu_index}"


def test_sourcing_setup_installs_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "CORESTREAM_VENV": str(tmp_path / "venv")}
    done = subprocess.run([BASH, "-c", ". scripts/setup.sh && type main >/dev/null"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "venv").exists()
