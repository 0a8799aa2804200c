"""Synthetic recall tasks for the trained models: multi-query associative recall (MQAR) and a contrastive
variant whose answer is the difference of two recalled values.

**MQAR** (the Zoology paper's form).  A sequence of length T starts with ``n`` key-value pairs
``k_1 v_1 k_2 v_2 ... k_n v_n`` (keys distinct, drawn from ``[1, V/2)``; values distinct, from ``[V/2, V)``).
The rest, ``T - 2n`` positions, holds every key once more as a query, in random order, at even offsets
``2 g`` of that region, the gaps ``g`` drawn without replacement from ``[0, (T - 2n)/2)`` with probability
``∝ g'^(a - 1)`` for ``g' = g + 1`` (a power law, ``a = 0.01``: most queries come soon after the context);
every other position holds the filler token 0 (or a random token with ``random_fill``).  The target at a
query's position is the value that followed that key; no other position is scored.  Needs ``4 n <= T`` and
``n < V/2``.

**Difference recall** (``DifferenceRecall``).  The context is the same ``n`` key-value pairs, but a value is a
number ``m in [0, M)`` (token ``value_base + m``, values may repeat).  Each query is an ordered pair of
distinct context keys ``(k_a, k_b)`` written as the triple ``k_a k_b 0``; the target at ``k_b``'s position
is the token of ``m_a - m_b`` (an answer token ``answer_base + m_a - m_b + M - 1``, 2M - 1 of them).  Read
out by attention, the answer is a signed contrast of two recalled values -- ``v_a - v_b`` is what a
single zero-sum attention row can output, while a softmax row is a convex mixture of values.  ``n`` queries
per sequence at triple offsets ``3 g`` (the same power law); needs ``5 n <= T``.

Every draw comes from a ``numpy.random.Generator``: a seed gives the same batches on every backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -1          # label of a position that is not scored


@dataclass(frozen=True)
class Batch:
    """Token ids ``(B, T)`` and targets ``(B, T)`` (``IGNORE`` where nothing is asked), int64 NumPy."""
    tokens: np.ndarray
    labels: np.ndarray


def sample_distinct(rng, n_rows: int, pool: int, k: int, offset: int = 0) -> np.ndarray:
    """``(n_rows, k)`` draws without replacement from ``offset + [0, pool)``, uniform, one row each."""
    if k > pool:
        raise ValueError(f"cannot draw {k} distinct items from a pool of {pool}")
    return offset + np.argsort(rng.random((n_rows, pool)), axis=1)[:, :k]


def power_law_gaps(rng, n_rows: int, space: int, k: int, power_a: float) -> np.ndarray:
    """``(n_rows, k)`` distinct gaps from ``[0, space)`` drawn one after another with probability
    ``∝ (g + 1)^(a - 1)`` among those left (the Gumbel top-k trick gives exactly that sequential draw)."""
    if k > space:
        raise ValueError(f"cannot place {k} queries in {space} slots")
    logp = (power_a - 1) * np.log(np.arange(1, space + 1))
    keys = logp + rng.gumbel(size=(n_rows, space))
    return np.argsort(-keys, axis=1)[:, :k]


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (module docstring).  ``vocab`` V, ``seq_len`` T, ``kv_pairs`` n."""
    vocab: int
    seq_len: int
    kv_pairs: int
    power_a: float = 0.01
    random_fill: bool = False

    name = "mqar"

    def __post_init__(self):
        T, n, V = self.seq_len, self.kv_pairs, self.vocab
        if n < 1 or T % 2 or 4 * n > T:
            raise ValueError(f"MQAR: need kv_pairs >= 1, an even seq_len and 4 * kv_pairs <= seq_len; "
                             f"got kv_pairs={n}, seq_len={T}")
        if n >= V // 2:
            raise ValueError(f"MQAR: kv_pairs={n} needs vocab > 2 * (kv_pairs + 1), got vocab={V}")

    @property
    def model_vocab(self) -> int:
        return self.vocab

    def queries(self) -> int:
        return self.kv_pairs

    def batch(self, rng, size: int) -> Batch:
        T, n, V = self.seq_len, self.kv_pairs, self.vocab
        half = V // 2
        keys = sample_distinct(rng, size, half - 1, n, offset=1)
        values = sample_distinct(rng, size, V - half, n, offset=half)
        tokens = (rng.integers(0, V, (size, T)) if self.random_fill else np.zeros((size, T), np.int64))
        tokens[:, 0:2 * n:2] = keys
        tokens[:, 1:2 * n:2] = values
        pos = 2 * n + 2 * power_law_gaps(rng, size, (T - 2 * n) // 2, n, self.power_a)
        rows = np.arange(size)[:, None]
        tokens[rows, pos] = keys
        labels = np.full((size, T), IGNORE, np.int64)
        labels[rows, pos] = values
        return Batch(tokens.astype(np.int64), labels)


@dataclass(frozen=True)
class DifferenceRecall:
    """Recall two values and answer their difference (module docstring).  ``keys`` distinct key tokens,
    ``values`` M numbers, ``seq_len`` T, ``kv_pairs`` n."""
    keys: int
    values: int
    seq_len: int
    kv_pairs: int
    power_a: float = 0.01

    name = "difference"

    def __post_init__(self):
        T, n = self.seq_len, self.kv_pairs
        if n < 2 or 5 * n > T:
            raise ValueError(f"DifferenceRecall: need kv_pairs >= 2 and 5 * kv_pairs <= seq_len; "
                             f"got kv_pairs={n}, seq_len={T}")
        if n > self.keys or self.values < 2:
            raise ValueError(f"DifferenceRecall: need kv_pairs <= keys and values >= 2; got kv_pairs={n}, "
                             f"keys={self.keys}, values={self.values}")

    @property
    def value_base(self) -> int:
        return 1 + self.keys

    @property
    def answer_base(self) -> int:
        return 1 + self.keys + self.values

    @property
    def model_vocab(self) -> int:
        return self.answer_base + 2 * self.values - 1

    def queries(self) -> int:
        return self.kv_pairs

    def answer(self, m_a, m_b):
        """Answer token of the pair (m_a, m_b) of numbers."""
        return self.answer_base + np.asarray(m_a) - np.asarray(m_b) + self.values - 1

    def batch(self, rng, size: int) -> Batch:
        T, n, M = self.seq_len, self.kv_pairs, self.values
        keys = sample_distinct(rng, size, self.keys, n, offset=1)
        nums = rng.integers(0, M, (size, n))
        tokens = np.zeros((size, T), np.int64)
        tokens[:, 0:2 * n:2] = keys
        tokens[:, 1:2 * n:2] = self.value_base + nums
        rows = np.arange(size)[:, None]
        ia = sample_distinct(rng, size, n, n)                   # query j asks (pair ia_j) - (pair ib_j)
        ib = (ia + rng.integers(1, n, (size, n))) % n           # a different pair
        pos = 2 * n + 3 * power_law_gaps(rng, size, (T - 2 * n) // 3, n, self.power_a)
        tokens[rows, pos] = np.take_along_axis(keys, ia, 1)
        tokens[rows, pos + 1] = np.take_along_axis(keys, ib, 1)
        labels = np.full((size, T), IGNORE, np.int64)
        labels[rows, pos + 1] = self.answer(np.take_along_axis(nums, ia, 1), np.take_along_axis(nums, ib, 1))
        return Batch(tokens, labels)
