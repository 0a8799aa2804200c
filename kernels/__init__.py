"""GPU kernels: CUDA C++ sources for CuPy (``kernels/cuda/*.cu`` loaded by ``kernels/cupy``) and Numba CUDA
kernels (``kernels/numba``).  Importing ``kernels.cupy`` or ``kernels.numba`` registers their variants;
neither imports a GPU library at import time."""
