"""What this CPU offers PyTorch's kernels: bfloat16's speed depends on it."""

import torch


def has_native_cpu_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX). Without them oneDNN emulates bf16: on an
    AVX2-only CPU the bf16 mask head ran 6-7x slower than float32 (docs/results/speed/inference_bf16_avx2.json)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_capability() -> str:
    """The vector instructions PyTorch's CPU kernels use here (``"AVX2"``, ``"AVX512"``, ...), with ``", bf16"`` where
    :func:`has_native_cpu_bfloat16`."""
    return torch.backends.cpu.get_cpu_capability() + (", bf16" if has_native_cpu_bfloat16() else "")
