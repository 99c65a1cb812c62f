"""The set-up's choice of torch build (scripts/_torch_variant.py): CPU-only where no GPU is seen."""

import os
import subprocess
import sys

import pytest

from fixtures.models import ROOT, load_repo_module

torch_variant = load_repo_module("scripts/_torch_variant.py")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _reachable(answer):
    asked = []

    def reachable(url):
        asked.append(url)
        return answer

    return reachable, asked


def test_auto_without_gpu_installs_the_cpu_build_from_the_cpu_index():
    reachable, asked = _reachable(True)
    variant, index_args, _ = torch_variant.choose("auto", False, CPU_INDEX, reachable)
    assert (variant, index_args, asked) == ("cpu", f"--index-url {CPU_INDEX}", [CPU_INDEX])


def test_auto_with_gpu_keeps_pypi_cuda_build_without_asking_the_cpu_index():
    reachable, asked = _reachable(True)
    assert torch_variant.choose("auto", True, CPU_INDEX, reachable)[:2] == ("cuda", "")
    assert asked == []


def test_auto_falls_back_to_cuda_and_says_so_when_the_cpu_index_is_unreachable():
    reachable, _ = _reachable(False)
    variant, index_args, message = torch_variant.choose("auto", False, CPU_INDEX, reachable)
    assert (variant, index_args) == ("cuda", "")
    assert CPU_INDEX in message and "cannot be reached" in message


def test_explicit_cpu_never_falls_back_to_cuda():
    reachable, _ = _reachable(False)
    with pytest.raises(ValueError, match="TORCH=cpu.*cannot be reached.*TORCH_CPU_INDEX"):
        torch_variant.choose("cpu", False, "https://mirror.example/cpu", reachable)


def test_explicit_cuda_and_unknown_variant():
    reachable, asked = _reachable(True)
    assert torch_variant.choose("cuda", False, CPU_INDEX, reachable)[:2] == ("cuda", "")
    assert asked == []
    with pytest.raises(ValueError, match="TORCH='rocm' is not one of auto, cpu, cuda"):
        torch_variant.choose("rocm", False, CPU_INDEX, reachable)


def test_file_index_is_checked_on_disk(tmp_path):
    (tmp_path / "torch").mkdir()
    assert torch_variant.index_reachable(f"file://{tmp_path}")
    assert not torch_variant.index_reachable(f"file://{tmp_path / 'missing'}")


def test_script_prints_variant_and_index_args_for_a_local_cpu_index(tmp_path):
    (tmp_path / "torch").mkdir()
    env = dict(os.environ, TORCH="cpu", TORCH_CPU_INDEX=f"file://{tmp_path}")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "_torch_variant.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cpu", f"--index-url file://{tmp_path}"]
    bad = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "_torch_variant.py")],
        env=dict(env, TORCH_CPU_INDEX=f"file://{tmp_path / 'missing'}"),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == "" and "cannot be reached" in bad.stderr
