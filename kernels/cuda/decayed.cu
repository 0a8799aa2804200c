// decayed.cu -- decayed linear attention on the shared chunked skeleton (chunked.cuh), DECAY = true.
//
// Forward: b = within-chunk cumulative log decays (computed by kernels/cupy/decayed.py, padded to NC*C),
//   chunk_state<TI, C, true, false>: S_c <- e^{b_last} S_{c-1} + sum_i e^{b_last - b_i} k_i v_i^T
//   chunk_out<TI, DXP, C, true, true, false>: o_t = scale [e^{b_t} q_t^T S_{c-1}
//                                                   + sum_{i<=t in chunk} e^{b_t - b_i} q_t.k_i v_i]
// Backward (reference decayed.py docstring): chunk_state REV gives dS = sum_{t later} e^{..} q_t do_t^T,
//   dq = chunk_out(X=do, Y=v, Z=k, H=S^T), dk = chunk_out REV(X=v, Y=do, Z=q, H=dS^T),
//   dv = chunk_out REV(X=k, Y=q, Z=do, H=dS); then dG_t = do_t.o_t - v_t.dv_t and dg = the reverse
//   cumulative sum of dG (kernels/cupy/decayed.py).  naive_out<TI, true, true, rev> is the plain version.
#include "chunked.cuh"
