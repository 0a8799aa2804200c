// linear.cu -- linear attention on the shared chunked skeleton (chunked.cuh).
//
// Linear attention is the core (*) of chunked.cuh with no decay (L = 0, b unused):
//   o = scale * phi(q) phi(k)^T v  (masked when causal): chunk_state<TI, C, false, false> then
//   chunk_out<TI, DXP, C, false, causal, false>; the backward is chunk_state<..., REV=true> (the suffix
//   states dS = sum phi(q) do^T) and three chunk_out launches for dq, dk (REV) and dv (REV).
// The feature map phi, its derivative, and normalize=True (a ones column appended to v: den = the extra
// output column; do_aug = [do / den, -(do.o) / den]) are applied by kernels/cupy/linear.py around the
// core, so the kernels here stay the shared ones.  naive_out<TI, false, causal, rev> is the plain version.
#include "chunked.cuh"
