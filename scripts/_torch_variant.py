"""Chooses which torch build the set-up installs (used by setup_env.sh).

    python scripts/_torch_variant.py            prints two lines: the variant ("cpu" or "cuda") and the
                                                 pip index arguments for it (empty for PyPI's default)

The choice comes from ``TORCH`` (``auto``, ``cpu`` or ``cuda``; default ``auto``):

- ``cuda``: PyPI's default build (Linux x86-64: CUDA, a ~6 GB environment).
- ``cpu``: PyTorch's CPU-only build from ``TORCH_CPU_INDEX`` (default https://download.pytorch.org/whl/cpu,
  the index PyTorch's install page gives). If that index cannot be reached, this is an error: asked for
  explicitly, a CPU build must not be silently replaced by a CUDA one.
- ``auto``: ``cpu`` where no NVIDIA GPU is seen (``nvidia-smi -L`` lists none), ``cuda`` where one is; a
  machine without a GPU whose CPU index cannot be reached falls back to ``cuda`` and says so on stderr.

Messages go to stderr; stdout carries only the two lines the set-up reads. Exit status 2 on an error.
"""

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

DEFAULT_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VARIANTS = ("auto", "cpu", "cuda")


def has_nvidia_gpu():
    """True where ``nvidia-smi -L`` runs and lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


def index_reachable(index_url, timeout=20):
    """True where the index answers for its ``torch/`` page (file:// indexes are checked on disk)."""
    page = index_url.rstrip("/") + "/torch/"
    if page.startswith("file://"):
        return os.path.isdir(page[len("file://") :])
    try:
        with urllib.request.urlopen(page, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose(requested, gpu_present, cpu_index, reachable):
    """Returns ``(variant, pip_index_args, message)``; raises ValueError for a request that cannot be met.

    ``reachable`` is a callable taking the index url (called only when the CPU build is wanted).
    """
    if requested not in VARIANTS:
        raise ValueError(f"TORCH={requested!r} is not one of {', '.join(VARIANTS)}")
    if requested == "cuda" or (requested == "auto" and gpu_present):
        why = "asked for (TORCH=cuda)" if requested == "cuda" else "an NVIDIA GPU is present"
        return "cuda", "", f"torch: PyPI's default (CUDA) build: {why}"
    if reachable(cpu_index):
        why = "asked for (TORCH=cpu)" if requested == "cpu" else "no NVIDIA GPU found"
        return "cpu", f"--index-url {cpu_index}", f"torch: the CPU-only build from {cpu_index}: {why}"
    if requested == "cpu":
        raise ValueError(
            f"TORCH=cpu, but the CPU-only index {cpu_index} cannot be reached; set TORCH_CPU_INDEX to a "
            "mirror of it, or TORCH=cuda to install PyPI's default build"
        )
    return (
        "cuda",
        "",
        f"torch: no NVIDIA GPU found, but the CPU-only index {cpu_index} cannot be reached: installing "
        "PyPI's default (CUDA, ~6 GB) build instead (TORCH_CPU_INDEX=<mirror> picks another CPU index)",
    )


def main():
    requested = os.environ.get("TORCH", "auto").strip().lower() or "auto"
    cpu_index = os.environ.get("TORCH_CPU_INDEX", DEFAULT_CPU_INDEX)
    gpu_present = requested == "auto" and has_nvidia_gpu()
    try:
        variant, index_args, message = choose(requested, gpu_present, cpu_index, index_reachable)
    except ValueError as error:
        print(f"[setup] {error}", file=sys.stderr)
        return 2
    print(f"[setup] {message}", file=sys.stderr)
    print(variant)
    print(index_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
