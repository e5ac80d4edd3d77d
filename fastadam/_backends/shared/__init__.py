"""What the CPU and CUDA kernels share, written once and compiled for each target."""
