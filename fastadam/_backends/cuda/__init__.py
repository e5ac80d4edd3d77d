"""The CUDA backend: ``numba.cuda`` kernels (dense, 8-bit, row-sparse), device memory and
batch plans. Imported only when a GPU step is asked for: numba-cuda is optional."""
