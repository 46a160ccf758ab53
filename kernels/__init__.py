"""Triton kernels (installed as `qwenvl_min.kernels`)."""
