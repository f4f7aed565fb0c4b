"""numba.cuda kernels and their host drivers, one file per op."""
