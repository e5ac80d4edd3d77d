"""The CPU backend: Numba ``prange`` kernels (dense, 8-bit, row-sparse) and batch plans."""
