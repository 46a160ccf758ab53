"""Shared test setup. Kernel tests run the Triton kernels on CPU under the interpreter."""

import os

import torch

if not torch.cuda.is_available():
    # must be set before any @triton.jit function is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
