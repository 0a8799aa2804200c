"""The segment table of both chunked cores (kernels/numba/_chunked.py and kernels/cupy/_chunked_mma.py), on
the host: the packed T axis cut into sequences (``cu``: offsets) and each sequence into segments of ``L``
chunks of ``C`` positions (L = 0: one segment per sequence).  One block walks one segment; each backend
keeps the rows on its device in the layout its kernels read."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segmentation:
    """What both backends' segment tables share (each adds its device arrays)."""
    cu: tuple
    L: int
    nseg: int

    @property
    def nseq(self) -> int:
        return len(self.cu) - 1

    @property
    def single(self) -> bool:
        """One segment per sequence: the walker starts from the initial state and writes the final one."""
        return self.nseg == self.nseq


@dataclass(frozen=True)
class SegmentRows:
    """The host rows of a segment table: ``rows`` (nseg, 4) int32, per segment t0, t1 (its positions
    [t0, t1)), its sequence and that sequence's end; ``seq_seg`` (nseq + 1,) int32, the offsets of each
    sequence's segments."""
    cu: tuple
    rows: np.ndarray
    seq_seg: np.ndarray


def segment_rows(T: int, C: int, L: int, cu=None) -> SegmentRows:
    """Cut the sequences ``cu`` (None: one sequence [0, T)) into segments of L chunks of C (L = 0: whole
    sequences)."""
    cu = tuple(int(x) for x in cu) if cu is not None else (0, T)
    rows, seq_seg = [], [0]
    for s, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        step = L * C if L > 0 else max(b - a, 1)
        rows += [(x, min(b, x + step), s, b) for x in range(a, b, step)]
        seq_seg.append(len(rows))
    return SegmentRows(cu, np.asarray(rows, np.int32).reshape(-1, 4), np.asarray(seq_seg, np.int32))
