"""hnswlib's cosine arithmetic in numpy, bit for bit: the normalisation it applies to vectors and the distance its
AVX-512 inner-product kernel computes. The pattern library (conditioning/library.py) finds candidates with a float32
matrix product and gives each found neighbour this distance, so every distance it reports is the one an hnswlib
index over the same patterns reports on a machine with AVX-512, and the same on any machine.

The kernel (hnswlib 0.8 ``InnerProductSIMD16ExtAVX512``, dimension a multiple of 16): lane ``j`` (0..15) of a
16-float accumulator sums ``a[16 i + j] * b[16 i + j]`` over ``i = 0, 1, ...`` in order, each step one fused
multiply-add (``acc = fl(a b + acc)``, one rounding); the 16 lanes are then added as a tree (``_mm512_reduce_add_ps``:
lanes ``j + 8`` onto ``j``, then ``j + 4`` onto ``j``, then ``2, 3`` onto ``0, 1``, then ``1`` onto ``0``) and the
distance is ``fl(1 - sum)``, all in float32.

A fused multiply-add in numpy: ``a b`` is exact in float64 (48 significant bits), ``s = fl64(a b + acc)`` and its
rounding error ``e`` come from Knuth's two-sum, and ``fl32(s)`` is the correctly rounded float32 result unless ``s``
lies exactly halfway between two float32 values while ``e != 0`` (rounding twice); there ``s`` is moved one float64
step towards the exact value first. Tests check it against hnswlib on millions of pairs
(tests/conditioning/test_ip_kernel.py).
"""

from __future__ import annotations

import numpy as np

LANES = 16
_DROPPED = np.int64((1 << 29) - 1)  # the float64 fraction bits a float32 drops (52 - 23)
_HALF = np.int64(1 << 28)  # ... and their value at a float32 halfway point


def unit_vectors(x: np.ndarray) -> np.ndarray:
    """``x [n, D]`` float32 -> ``x / |x|`` as hnswlib's ``normalize_vector`` computes it, bit for bit: the float32
    sum of squares accumulated in index order, then ``x * (1 / (sqrt(sum) + 1e-30))``. A zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    # a running sum, in order (a pairwise or blocked sum would round differently); float32 squares, float32 sums
    sum_sq = np.cumsum(x * x, axis=1, dtype=np.float32)[:, -1]
    return x * (np.float32(1.0) / (np.sqrt(sum_sq) + np.float32(1e-30)))[:, None]


def _fma32(product: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """``fl32(product + acc)`` with one rounding: exact float64 products, float32 accumulators (same shapes)."""
    s = product + acc  # float64
    halfway = (s.view(np.int64) & _DROPPED) == _HALF  # rounding s to float32 is a tie: was s itself rounded?
    if halfway.any():  # rare
        p, a, t = product[halfway], acc[halfway].astype(np.float64), s[halfway]
        b = t - p
        err = (p - (t - b)) + (a - b)  # two-sum: t + err == p + a exactly
        s[halfway] = np.where(err > 0, np.nextafter(t, np.inf), np.where(err < 0, np.nextafter(t, -np.inf), t))
    return s.astype(np.float32)


def ip_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of float32 rows ``a [P, D]``, ``b [P, D]`` (``D`` a multiple of 16) -> ``1 - a . b`` ``[P]`` float32 as
    hnswlib's AVX-512 kernel computes it (module docstring)."""
    n, dim = a.shape
    if dim % LANES:
        raise ValueError(f"ip_distances: the dimension must be a multiple of {LANES}, got {dim}")
    products = np.multiply(a, b, dtype=np.float64).reshape(n, dim // LANES, LANES)  # exact
    lanes = products[:, 0].astype(np.float32)  # fma(a, b, 0): one rounding of the exact product
    for i in range(1, dim // LANES):
        lanes = _fma32(products[:, i], lanes)  # [P, 16]
    eight = lanes[:, 8:] + lanes[:, :8]
    four = eight[:, 4:] + eight[:, :4]
    total = (four[:, 2] + four[:, 0]) + (four[:, 3] + four[:, 1])
    return np.float32(1.0) - total
