"""The one place where numba compilation flags live (style: kernels apart from the API).

``fastmath`` is never on: kernels compare integers and distances exactly.
"""

from __future__ import annotations

import numba

#: Serial kernels: cached on disk so a second process does not recompile.
NJIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
#: Kernels that split work over cores with ``numba.prange``.
NJIT_PARALLEL = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", parallel=True)

njit = numba.njit
prange = numba.prange

__all__ = ["NJIT", "NJIT_PARALLEL", "njit", "num_threads", "prange"]


def num_threads() -> int:
    """Threads numba's parallel kernels may use (``numba.get_num_threads``)."""
    return numba.get_num_threads()
