"""Numba kernels of the clustering step (layer 1: numpy and numba only).

All kernels work on *keys*: the collapsed units that the public ``cluster`` module
builds (one key per distinct hash value, or per distinct ``(hash, label)`` under
``per_class``). Keys are numbered in keep-priority order, so "the highest-priority
key" is always "the smallest key id". Near-duplicate pairs between keys arrive as a
lower-triangular CSR adjacency: row ``k`` lists the neighbours ``j < k`` of key ``k``
and their Hamming distances. Greedy only ever looks at neighbours visited earlier,
so the lower half is all it needs, at half the memory.
"""

from __future__ import annotations

import numpy as np

from .._numba import NJIT, NJIT_PARALLEL, njit, prange

__all__ = [
    "best_position",
    "component_leaders",
    "components_keys",
    "cross_label_pairs",
    "expand_key_pairs",
    "fold_lowest",
    "fold_nearest",
    "greedy_keys",
    "greedy_window",
    "lower_csr",
    "pair_histogram_csr",
    "pair_histogram_edges",
    "sweep_components",
    "sweep_greedy",
    "union_levels",
    "value_class_groups",
]


@njit(**NJIT)
def best_position(key_seq, n_keys):  # pragma: no cover - compiled
    """``pos[k]``: the first position of key ``k`` in ``key_seq`` (items in priority order)."""
    pos = np.full(n_keys, -1, np.int64)
    for p in range(key_seq.shape[0]):
        k = key_seq[p]
        if pos[k] < 0:
            pos[k] = p
    return pos


@njit(**NJIT)
def value_class_groups(inv, code, n_values):  # pragma: no cover - compiled
    """Group items by ``(value, class)`` without a global sort.

    A counting sort by value (stable, so members stay in index order), then the few
    classes of each value sorted locally. Returns ``(group_value, group_class,
    group_first, item_group)``: groups ordered by value then class, each with its
    lowest-index item, and each item's group.
    """
    n = inv.shape[0]
    ptr = np.zeros(n_values + 1, np.int64)
    for i in range(n):
        ptr[inv[i] + 1] += 1
    for u in range(n_values):
        ptr[u + 1] += ptr[u]
    fill = ptr[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[inv[i]]] = i
        fill[inv[i]] += 1
    g_value = np.empty(n, np.int64)
    g_class = np.empty(n, np.int64)
    g_first = np.empty(n, np.int64)
    item_group = np.empty(n, np.int64)
    n_groups = 0
    buf = np.empty(32, np.int64)
    for u in range(n_values):
        a, b = ptr[u], ptr[u + 1]
        if b - a == 1:  # the common case: a value held by one item
            i = order[a]
            g_value[n_groups], g_class[n_groups], g_first[n_groups] = u, code[i], i
            item_group[i] = n_groups
            n_groups += 1
            continue
        m = b - a
        if m <= 32:  # insertion sort with dedup in a reused buffer: no allocation per value
            k = 0
            for x in range(a, b):
                c = code[order[x]]
                y = k
                while y > 0 and buf[y - 1] > c:
                    y -= 1
                if y > 0 and buf[y - 1] == c:
                    continue
                for z in range(k, y, -1):
                    buf[z] = buf[z - 1]
                buf[y] = c
                k += 1
            cls = buf[:k]
        else:
            tmp = np.empty(m, np.int64)
            for x in range(a, b):
                tmp[x - a] = code[order[x]]
            cls = np.unique(tmp)
        base = n_groups
        for c in range(cls.shape[0]):
            g_value[base + c], g_class[base + c], g_first[base + c] = u, cls[c], -1
        for x in range(a, b):  # members in index order: the first one seen is the lowest
            i = order[x]
            gi = base + np.searchsorted(cls, code[i])
            item_group[i] = gi
            if g_first[gi] < 0:
                g_first[gi] = i
        n_groups += cls.shape[0]
    return g_value[:n_groups].copy(), g_class[:n_groups].copy(), g_first[:n_groups].copy(), item_group


@njit(**NJIT)
def lower_csr(a, b, d, n_keys):  # pragma: no cover - compiled
    """Lower-triangular CSR of the undirected key pairs ``(a, b, d)``; self pairs are dropped."""
    counts = np.zeros(n_keys + 1, np.int64)
    for e in range(a.shape[0]):
        x, y = a[e], b[e]
        if x != y:
            counts[max(x, y) + 1] += 1
    for k in range(n_keys):
        counts[k + 1] += counts[k]
    indptr = counts.copy()
    fill = counts[:-1].copy()
    nbr = np.empty(indptr[n_keys], np.int64)
    dist = np.empty(indptr[n_keys], d.dtype)
    for e in range(a.shape[0]):
        x, y = a[e], b[e]
        if x == y:
            continue
        hi, lo = max(x, y), min(x, y)
        p = fill[hi]
        nbr[p] = lo
        dist[p] = d[e]
        fill[hi] = p + 1
    return indptr, nbr, dist


@njit(**NJIT)
def greedy_keys(indptr, nbr, dist, threshold, excluded):  # pragma: no cover - compiled
    """Greedy keep decision over keys visited in id order.

    Returns ``(kept, rep, rep_dist)``: ``rep[k]`` is the smallest-id (highest
    priority) kept neighbour within ``threshold`` of a dropped key (``-1`` for kept
    or excluded keys) and ``rep_dist[k]`` its distance.
    """
    n = indptr.shape[0] - 1
    kept = np.zeros(n, np.bool_)
    rep = np.full(n, -1, np.int64)
    rep_dist = np.zeros(n, np.int16)
    for k in range(n):
        if excluded[k]:
            continue
        best = -1
        bd = 0
        for e in range(indptr[k], indptr[k + 1]):
            if dist[e] > threshold:
                continue
            j = nbr[e]
            if kept[j] and (best < 0 or j < best):
                best = j
                bd = dist[e]
        if best < 0:
            kept[k] = True
        else:
            rep[k] = best
            rep_dist[k] = bd
    return kept, rep, rep_dist


@njit(**NJIT)
def _find(parent, x):  # pragma: no cover - compiled
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(**NJIT)
def _union(parent, x, y):  # pragma: no cover - compiled
    rx = _find(parent, x)
    ry = _find(parent, y)
    if rx != ry:
        # the smaller id becomes the root, so a root is its component's best key
        if rx < ry:
            parent[ry] = rx
        else:
            parent[rx] = ry


@njit(**NJIT)
def components_keys(indptr, nbr, dist, threshold, excluded):  # pragma: no cover - compiled
    """Connected components; returns ``leader[k]``, the smallest key id of k's component (-1 if excluded)."""
    n = indptr.shape[0] - 1
    parent = np.arange(n)
    for k in range(n):
        if excluded[k]:
            continue
        for e in range(indptr[k], indptr[k + 1]):
            j = nbr[e]
            if dist[e] <= threshold and not excluded[j]:
                _union(parent, k, j)
    leader = np.full(n, -1, np.int64)
    for k in range(n):
        if not excluded[k]:
            leader[k] = _find(parent, k)
    return leader


@njit(**NJIT_PARALLEL)
def sweep_greedy(indptr, nbr, dist, excl_level, key_class, n_classes, max_t):  # pragma: no cover - compiled
    """Kept count per class at every threshold ``0..max_t`` (greedy), one level per thread.

    ``excl_level[k]`` is the smallest threshold at which key ``k`` is excluded
    (leaks into the ``against`` set); a large value means never.
    """
    n = indptr.shape[0] - 1
    out = np.zeros((max_t + 1, n_classes), np.int64)
    for t in prange(max_t + 1):
        kept = np.zeros(n, np.bool_)
        for k in range(n):
            if excl_level[k] <= t:
                continue
            free = True
            for e in range(indptr[k], indptr[k + 1]):
                if dist[e] <= t and kept[nbr[e]]:
                    free = False
                    break
            if free:
                kept[k] = True
                out[t, key_class[k]] += 1
    return out


@njit(**NJIT_PARALLEL)
def sweep_components(indptr, nbr, dist, excl_level, key_class, n_classes, max_t):  # pragma: no cover - compiled
    """Component count per class (class of each component's best key) at every threshold ``0..max_t``.

    One union-find per level: ``against`` exclusions grow with the threshold and
    remove edges, which an incremental union-find could not undo.
    """
    n = indptr.shape[0] - 1
    out = np.zeros((max_t + 1, n_classes), np.int64)
    for t in prange(max_t + 1):
        parent = np.arange(n)
        for k in range(n):
            if excl_level[k] <= t:
                continue
            for e in range(indptr[k], indptr[k + 1]):
                j = nbr[e]
                if dist[e] <= t and excl_level[j] > t:
                    _union(parent, k, j)
        for k in range(n):
            if excl_level[k] > t and _find(parent, k) == k:
                out[t, key_class[k]] += 1
    return out


@njit(**NJIT)
def pair_histogram_csr(indptr, nbr, dist, mult, max_t):  # pragma: no cover - compiled
    """Item pairs at every distance ``0..max_t``: ``out[d]``, from the key CSR.

    A key stands for ``mult[k]`` items with one hash value, so its ``C(m, 2)`` inner pairs
    lie at distance 0 and an edge ``(k, j)`` at distance ``d`` stands for ``mult[k] *
    mult[j]`` item pairs. Edges beyond ``max_t`` (the search may run at a larger
    threshold) are left out.
    """
    out = np.zeros(max_t + 1, np.int64)
    for k in range(indptr.shape[0] - 1):
        m = mult[k]
        out[0] += m * (m - 1) // 2
        for e in range(indptr[k], indptr[k + 1]):
            d = dist[e]
            if d <= max_t:
                out[d] += m * mult[nbr[e]]
    return out


@njit(**NJIT)
def pair_histogram_edges(ii, jj, dd, mult, cls, use_cls, max_t, out):  # pragma: no cover - compiled
    """Fold one part of a streamed key-pair search into ``out[d]`` (item pairs at distance ``d``).

    Pairs of keys of different classes are skipped when ``use_cls`` (``per_class``);
    inner pairs of a key are not counted here.
    """
    for e in range(ii.shape[0]):
        i, j, d = ii[e], jj[e], dd[e]
        if d > max_t or (use_cls and cls[i] != cls[j]):
            continue
        out[d] += mult[i] * mult[j]


@njit(**NJIT)
def _merge_key_pairs(pu, pv, pd, key_ptr, key_class, ka, kb, kd, write):  # pragma: no cover - compiled
    """One merge pass over every value pair: counts same-class key pairs, and writes them when ``write``."""
    q = 0
    for p in range(pu.shape[0]):
        a, b = key_ptr[pu[p]], key_ptr[pv[p]]
        ae, be = key_ptr[pu[p] + 1], key_ptr[pv[p] + 1]
        while a < ae and b < be:
            ca, cb = key_class[a], key_class[b]
            if ca == cb:
                if write:
                    ka[q] = a
                    kb[q] = b
                    kd[q] = pd[p]
                q += 1
                a += 1
                b += 1
            elif ca < cb:
                a += 1
            else:
                b += 1
    return q


@njit(**NJIT)
def expand_key_pairs(pu, pv, pd, key_ptr, key_class):  # pragma: no cover - compiled
    """Expand pairs of distinct hash values into pairs of same-class keys.

    Keys of hash value ``u`` are ``key_ptr[u]..key_ptr[u+1]``, sorted by class, so
    the same-class keys of two values meet in one merge pass (run twice: count, then fill).
    """
    ka = np.empty(0, np.int64)
    kb = np.empty(0, np.int64)
    kd = np.empty(0, pd.dtype)
    total = _merge_key_pairs(pu, pv, pd, key_ptr, key_class, ka, kb, kd, False)
    ka = np.empty(total, np.int64)
    kb = np.empty(total, np.int64)
    kd = np.empty(total, pd.dtype)
    _merge_key_pairs(pu, pv, pd, key_ptr, key_class, ka, kb, kd, True)
    return ka, kb, kd


@njit(**NJIT)
def _class_run(members, item_class, lo, hi, c):  # pragma: no cover - compiled
    """``[a, b)``: the run of class ``c`` in ``members[lo:hi]`` (sorted by class)."""
    a, b = lo, hi
    while a < b:  # first position with class >= c
        m = (a + b) // 2
        if item_class[members[m]] < c:
            a = m + 1
        else:
            b = m
    start = a
    b = hi
    while a < b:  # first position with class > c
        m = (a + b) // 2
        if item_class[members[m]] <= c:
            a = m + 1
        else:
            b = m
    return start, a


@njit(**NJIT)
def _cross_pass(pu, pv, pd, mem_ptr, members, item_class, run_end, intra, out_i, out_j, out_d, write):
    # pragma: no cover - compiled
    q = 0
    n_vals = mem_ptr.shape[0] - 1
    for u in range(n_vals if intra else 0):
        for x in range(mem_ptr[u], mem_ptr[u + 1]):
            for y in range(run_end[x], mem_ptr[u + 1]):  # every later run has another class
                if write:
                    i, j = members[x], members[y]
                    out_i[q] = min(i, j)
                    out_j[q] = max(i, j)
                    out_d[q] = 0
                q += 1
    for p in range(pu.shape[0]):
        su, eu = mem_ptr[pu[p]], mem_ptr[pu[p] + 1]
        sv, ev = mem_ptr[pv[p]], mem_ptr[pv[p] + 1]
        for x in range(su, eu):
            lo, hi = _class_run(members, item_class, sv, ev, item_class[members[x]])
            for part in range(2):
                ya, yb = (sv, lo) if part == 0 else (hi, ev)
                for y in range(ya, yb):
                    if write:
                        i, j = members[x], members[y]
                        out_i[q] = min(i, j)
                        out_j[q] = max(i, j)
                        out_d[q] = pd[p]
                    q += 1
    return q


@njit(**NJIT)
def cross_label_pairs(pu, pv, pd, mem_ptr, members, item_class, run_end, intra, max_out):  # pragma: no cover
    """Item pairs with different classes: within each hash value (distance 0) and across value pairs.

    ``members[mem_ptr[u]:mem_ptr[u+1]]`` are the items of hash value ``u`` sorted by
    class, and ``run_end[x]`` is the end of the class run holding position ``x``, so
    the work is proportional to the pairs found, not to the group sizes squared.
    ``intra=False`` leaves out the pairs inside each value (a streamed caller adds them
    once). Counts first: above ``max_out`` pairs nothing is allocated.
    Returns ``(i, j, d, total)`` with ``i < j``, unsorted; empty arrays when ``total > max_out``.
    """
    dummy_i = np.empty(0, np.int64)
    dummy_d = np.empty(0, pd.dtype)
    total = _cross_pass(pu, pv, pd, mem_ptr, members, item_class, run_end, intra, dummy_i, dummy_i, dummy_d, False)
    if total > max_out:
        return dummy_i, dummy_i.copy(), dummy_d, total
    out_i = np.empty(total, np.int64)
    out_j = np.empty(total, np.int64)
    out_d = np.empty(total, pd.dtype)
    _cross_pass(pu, pv, pd, mem_ptr, members, item_class, run_end, intra, out_i, out_j, out_d, True)
    return out_i, out_j, out_d, total


# ---------------------------------------------------------------- streamed decisions
# A streamed search hands its pairs over in parts, in no order; these kernels fold each
# part into a fixed-size state, so the decision never holds all pairs at once.


@njit(**NJIT)
def fold_lowest(ii, jj, dd, cls_a, cls_b, use_cls, best_j, best_d):  # pragma: no cover - compiled
    """``best_j[i]``: the lowest ``j`` paired with ``i`` so far (``-1``: none), ``best_d[i]`` its distance.

    Pairs whose classes differ are skipped when ``use_cls`` (``per_class``).
    """
    for e in range(ii.shape[0]):
        i, j = ii[e], jj[e]
        if use_cls and cls_a[i] != cls_b[j]:
            continue
        if best_j[i] < 0 or j < best_j[i]:
            best_j[i] = j
            best_d[i] = dd[e]


@njit(**NJIT)
def fold_nearest(ii, jj, dd, row_of_j, best_row, best_d):  # pragma: no cover - compiled
    """Per ``i``: the smallest ``(distance, row_of_j[j])`` seen so far (``best_row`` -1: none)."""
    for e in range(ii.shape[0]):
        i, d, r = ii[e], dd[e], row_of_j[jj[e]]
        if best_row[i] < 0 or d < best_d[i] or (d == best_d[i] and r < best_row[i]):
            best_row[i] = r
            best_d[i] = d


@njit(**NJIT)
def greedy_window(w, prior_j, prior_d, pi, pj, pd, kept, rep, rep_dist):  # pragma: no cover - compiled
    """Greedy over one window of keys, after every key before it is decided.

    ``w``: the window's key ids, ascending (priority order), none excluded.
    ``prior_j[x]``/``prior_d[x]``: the smallest kept key before the window within the
    threshold of ``w[x]`` (-1: none) and its distance. ``(pi, pj, pd)``: the pairs
    inside the window within the threshold, as positions in ``w`` with ``pi < pj``, any
    order. Writes ``kept``, ``rep``, ``rep_dist`` of the window's keys exactly as
    :func:`greedy_keys` does: a kept key before the window always has a smaller id than
    any key inside it, so it wins when there is one.
    """
    n = w.shape[0]
    ptr = np.zeros(n + 1, np.int64)
    for e in range(pi.shape[0]):
        ptr[pj[e] + 1] += 1
    for x in range(n):
        ptr[x + 1] += ptr[x]
    fill = ptr[:-1].copy()
    nbr = np.empty(pi.shape[0], np.int64)
    nd = np.empty(pi.shape[0], np.int64)
    for e in range(pi.shape[0]):
        q = fill[pj[e]]
        nbr[q] = pi[e]
        nd[q] = pd[e]
        fill[pj[e]] = q + 1
    for x in range(n):
        k = w[x]
        if prior_j[x] >= 0:
            rep[k] = prior_j[x]
            rep_dist[k] = prior_d[x]
            continue
        best = -1
        bd = 0
        for e in range(ptr[x], ptr[x + 1]):
            y = nbr[e]
            if kept[w[y]] and (best < 0 or y < best):
                best = y
                bd = nd[e]
        if best < 0:
            kept[k] = True
        else:
            rep[k] = w[best]
            rep_dist[k] = bd


@njit(**NJIT)
def union_levels(parents, levels, ii, jj, dd, excl_level, cls, use_cls):  # pragma: no cover - compiled
    """Fold pairs into one union-find per threshold: ``parents[l]`` joins pairs with ``d <= levels[l]``.

    A key is left out of level ``l`` when ``excl_level[key] <= levels[l]`` (it leaked),
    and pairs across classes when ``use_cls``. The smaller id becomes the root, as in
    :func:`components_keys`.
    """
    for e in range(ii.shape[0]):
        i, j, d = ii[e], jj[e], dd[e]
        if use_cls and cls[i] != cls[j]:
            continue
        for lv in range(levels.shape[0]):
            s = levels[lv]
            if d <= s and excl_level[i] > s and excl_level[j] > s:
                _union(parents[lv], i, j)


@njit(**NJIT)
def component_leaders(parent, excl_level, level):  # pragma: no cover - compiled
    """``leader[k]``: the root (smallest id) of k's component, -1 for keys excluded at ``level``."""
    n = parent.shape[0]
    leader = np.full(n, -1, np.int64)
    for k in range(n):
        if excl_level[k] > level:
            leader[k] = _find(parent, k)
    return leader
