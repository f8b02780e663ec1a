"""Pictures of a :class:`~torch_dedup.plan.DedupPlan`: a static HTML gallery and a PNG contact sheet.

Both show the duplicate groups (a kept item and the items removed for it), largest
first, so that a person can judge a threshold in seconds. The HTML report opens with
what decides whether the threshold is right: the *borderline* pairs (items removed at
the threshold's edge, ``t`` and ``t - 1`` from their kept item) and, when the plan holds
a sweep, near-duplicate pairs and kept items per threshold (docs/thresholds.md). It is
self-contained: thumbnails are PNG files in the report folder (or ``data:`` URIs with
``inline=True``), no script or style is fetched from anywhere, and it splits into
pages linked by next/previous when there are many groups.

Images come from an ``image_of(i)`` callable returning item ``i``'s raw image: a PIL
image, a ``uint8`` array ``(H, W)``/``(H, W, C)``, or a file path —
``torch_dedup.sources.source_of(ds).item`` is exactly that.

Layer 5 (reads a plan, never hashes or searches). Pillow only.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .plan import DedupPlan

__all__ = ["BorderlinePair", "ReportGroup", "borderline_pairs", "duplicate_groups", "threshold_cosines", "to_pil",
           "write_contact_sheet", "write_html_report"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportGroup:
    """One duplicate group as the reports show it.

    Attributes:
        rank: 0 for the largest group, 1 for the next, ...
        kept: index of the kept item.
        size: number of items in the group (kept one included).
        members: shown members, the kept item first, then by distance to it and index
            (at most ``max_members``).
        distances: Hamming distance of each shown member to the kept item.
    """

    rank: int
    kept: int
    size: int
    members: np.ndarray
    distances: np.ndarray


def duplicate_groups(plan: DedupPlan, max_groups: int | None = None, max_members: int | None = None
                     ) -> list[ReportGroup]:
    """Groups with at least one removed item, largest first (ties by the kept item's index).

    Args:
        plan: the plan.
        max_groups: at most this many groups (``None``: all).
        max_members: at most this many members per group (``None``: all).

    Returns:
        A list of :class:`ReportGroup`.

    Raises:
        ValueError: a negative cap.

    Example:
        >>> import numpy as np
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> plan = find_duplicates(np.array([0, 1, 0xFF00, 3], dtype=np.uint64), threshold=2)
        >>> [(g.kept, g.members.tolist()) for g in duplicate_groups(plan)]
        [(0, [0, 1, 3])]
    """
    for name, cap in (("max_groups", max_groups), ("max_members", max_members)):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
            raise ValueError(f"{name}={cap!r} must be a positive int or None")
    sizes = plan.group_sizes()
    n_dup = int(np.count_nonzero(sizes > 1))
    k = n_dup if max_groups is None else min(n_dup, int(max_groups))
    out = []
    for rank, (kept, members) in enumerate(plan.largest_groups(k)):
        d = plan.distance_to_rep[members].astype(np.int64)
        order = np.lexsort((members, d, members != kept))  # kept first, then distance, then index
        members, d = members[order], d[order]
        if max_members is not None:
            members, d = members[:max_members], d[:max_members]
        out.append(ReportGroup(rank, int(kept), int(sizes[plan.group[kept]]), members, d))
    return out


class BorderlinePair(NamedTuple):
    """A removed item and the kept item it was removed for, at a distance near the threshold."""

    kept: int
    removed: int
    distance: int


def borderline_pairs(plan: DedupPlan, max_pairs: int | None = None, below: int = 1) -> list[BorderlinePair]:
    """The removals at the edge of the threshold: what a person looks at to judge it.

    A removed item whose distance to its kept item is ``plan.threshold`` (or up to
    ``below`` less) is the first to come back if the threshold were lowered: if these
    pairs are true duplicates the threshold is not too high. Farthest first (under
    ``components`` an item can lie beyond the threshold, joined through a chain: those
    come first), then by the removed item's index.

    Args:
        plan: the plan.
        max_pairs: at most this many pairs (``None``: all).
        below: also pairs down to ``threshold - below`` (an int >= 0).

    Returns:
        A list of :class:`BorderlinePair`.

    Raises:
        ValueError: a bad cap.

    Example:
        >>> import numpy as np
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> plan = find_duplicates(np.array([0, 1, 3, 0xFF00], dtype=np.uint64), threshold=2)
        >>> borderline_pairs(plan)
        [BorderlinePair(kept=0, removed=2, distance=2), BorderlinePair(kept=0, removed=1, distance=1)]
    """
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer))
                                  or max_pairs < 0):
        raise ValueError(f"max_pairs={max_pairs!r} must be an int >= 0 or None")
    if isinstance(below, bool) or not isinstance(below, (int, np.integer)) or below < 0:
        raise ValueError(f"below={below!r} must be an int >= 0")
    removed = plan.removed_indices
    d = plan.distance_to_rep[removed].astype(np.int64)
    edge = d >= plan.threshold - below
    removed, d = removed[edge], d[edge]
    order = np.lexsort((removed, -d))[:max_pairs]
    rep = plan.representative[removed[order]]
    return [BorderlinePair(int(k), int(i), int(x)) for k, i, x in zip(rep.tolist(), removed[order].tolist(),
                                                                         d[order].tolist())]


def threshold_cosines(plan: DedupPlan, max_threshold: int | None = None) -> list[float] | None:
    """``cos(pi t / bits)`` for ``t = 0..max_threshold`` when the plan's codes are random-hyperplane
    signs (method ``colour_dct*`` or ``embed*``), where a Hamming threshold stands for a cosine;
    None for perceptual hashes, whose bits have no such meaning.

    Args:
        plan: the plan (its settings say the method and ``hash_bits``).
        max_threshold: the last threshold (default: the sweep's last, else the plan's threshold).

    Example:
        >>> import numpy as np
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> plan = find_duplicates(np.zeros(2, np.uint64), 1, settings={"method": "colour_dct"})
        >>> [round(c, 3) for c in threshold_cosines(plan)]
        [1.0, 0.999]
    """
    from .hashing import cosine_for_threshold
    method = plan.settings.get("method")
    bits = plan.settings.get("hash_bits")
    if not isinstance(method, str) or not method.startswith(("colour_dct", "embed")) or not isinstance(bits, int):
        return None
    if max_threshold is None:
        max_threshold = len(plan.sweep) - 1 if plan.sweep is not None else plan.threshold
    return [cosine_for_threshold(t, bits) for t in range(int(max_threshold) + 1)]


def to_pil(image: Any) -> Image.Image:
    """A raw image (PIL image, uint8 array ``(H, W[, C])``, CHW tensor/array, or file path) as PIL RGB/L.

    Raises:
        ValueError: an array of an unsupported shape or dtype.
        OSError: a path Pillow cannot open.
    """
    if isinstance(image, Image.Image):
        im = image
    elif isinstance(image, (str, os.PathLike)):
        with Image.open(image) as f:
            im = f.copy()
    else:
        arr = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f" and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim not in (2, 3):
            raise ValueError(f"cannot show an image array of shape {arr.shape}; expected (H, W) or (H, W, C)")
        im = Image.fromarray(np.ascontiguousarray(arr))
    return im if im.mode in ("RGB", "L") else im.convert("RGB")


def _thumbnail(image: Any, size: int) -> Image.Image:
    im = to_pil(image)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)  # only shrinks; CSS scales small ones up
    return im


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} .meta{color:#555;margin:.2em 0 1em}
nav{margin:1em 0} nav a,nav span{margin-right:1em}
section.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin:0 0 1em}
section.group h2{font-size:1em;margin:0 0 .5em}
.items{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:THUMBpx;font-size:.75em;text-align:center;border:3px solid #d9534f;
 border-radius:4px;padding:2px;background:#fff}
figure.kept{border-color:#2e8b57} figure img{width:THUMBpx;height:THUMBpx;object-fit:contain;
 image-rendering:pixelated;background:#eee;display:block}
section.borderline,section.sweep{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em .8em;
 margin:0 0 1em} section.borderline h2,section.sweep h2{font-size:1em;margin:0 0 .3em}
.pair{display:flex;gap:.3em;border:1px solid #eee;border-radius:4px;padding:.3em}
.pair h3{writing-mode:vertical-rl;transform:rotate(180deg);font-size:.8em;margin:0;color:#555}
table.sweep{border-collapse:collapse;font-size:.85em} table.sweep td,table.sweep th{padding:.15em .6em;text-align:right}
table.sweep tr.chosen{background:#e6f2ea;font-weight:bold} .hint{color:#555;font-size:.85em;margin:.2em 0 .5em}
figcaption{overflow-wrap:anywhere} .differs{color:#c77700;font-weight:bold} .badge{font-weight:bold;color:#2e8b57} .more{color:#555;align-self:center}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-loaded", String(ok));
});
"""


def _label_text(plan: DedupPlan, i: int, class_names: Sequence[str] | None) -> str | None:
    if plan.labels is None:
        return None
    lab = int(plan.labels[i])
    if class_names is not None and 0 <= lab < len(class_names):
        return f"{class_names[lab]} ({lab})"
    return str(lab)


def _page_name(page: int) -> str:
    return "index.html" if page == 0 else f"page-{page + 1}.html"


def _nav(page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    parts = [f'<a rel="prev" href="{_page_name(page - 1)}">&larr; previous</a>' if page > 0 else ""]
    parts.append(f"<span>page {page + 1} of {pages}</span>")
    parts.append(f'<a rel="next" href="{_page_name(page + 1)}">next &rarr;</a>' if page + 1 < pages else "")
    return "<nav>" + "".join(p for p in parts if p) + "</nav>"


def write_html_report(plan: DedupPlan, image_of: Callable[[int], Any], out_dir: str | os.PathLike, *,
                      paths: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                      max_groups: int | None = 200, max_members: int | None = 48, groups_per_page: int = 25,
                      thumb_size: int = 96, inline: bool = False, title: str = "torch_dedup report",
                      max_borderline: int = 24) -> list[Path]:
    """Write the duplicate groups of ``plan`` as static HTML pages (largest group first).

    The first page opens with the choice of threshold: when the plan holds a sweep
    (``find_duplicates(..., sweep_max=T)``), a table of near-duplicate pairs and kept
    items at each threshold ``0..T`` (and the cosine each stands for, for
    random-hyperplane codes), the plan's threshold marked; then a gallery of the
    borderline pairs (:func:`borderline_pairs`: kept item beside the item removed for it
    at distance ``t`` or ``t - 1``).

    Each image shows its index (and path), its label (class name when known) and its
    Hamming distance to the group's kept item; the kept item is marked. Pages are
    ``index.html``, ``page-2.html``, ... linked by next/previous. Nothing is fetched from
    the network; a small inline script sets ``data-loaded``/``data-images`` on ``<body>``
    after load, so a headless browser can check that every thumbnail decoded.

    Args:
        plan: the plan to show.
        image_of: ``image_of(i)`` -> raw image of item ``i`` (see the module doc).
        out_dir: report folder (created; report pages already in it are replaced).
        paths: per-item file paths to show, or None.
        class_names: label value -> name, or None.
        max_groups: show at most this many groups (``None``: all).
        max_members: show at most this many items per group; the rest are counted.
        groups_per_page: groups per HTML page.
        thumb_size: thumbnail side in pixels.
        inline: embed thumbnails as ``data:`` URIs (one file per page) instead of
            writing ``thumbs/<i>.png``.
        title: page title.
        max_borderline: borderline pairs shown on the first page at most (0: none).

    Returns:
        The HTML pages written, first page first.

    Raises:
        ValueError: a bad option.
        OSError: an image file cannot be read or the folder written.

    Example:
        >>> import numpy as np, tempfile
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> imgs = np.zeros((3, 8, 8), np.uint8)
        >>> plan = find_duplicates(np.array([0, 1, 0xFF00], dtype=np.uint64), threshold=1)
        >>> pages = write_html_report(plan, lambda i: imgs[i], tempfile.mkdtemp())
        >>> [p.name for p in pages]
        ['index.html']
    """
    if isinstance(groups_per_page, bool) or not isinstance(groups_per_page, int) or groups_per_page < 1:
        raise ValueError(f"groups_per_page={groups_per_page!r} must be a positive int")
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or not 8 <= thumb_size <= 1024:
        raise ValueError(f"thumb_size={thumb_size!r} must be an int in [8, 1024]")
    if isinstance(max_borderline, bool) or not isinstance(max_borderline, int) or max_borderline < 0:
        raise ValueError(f"max_borderline={max_borderline!r} must be an int >= 0 (0 shows no borderline pairs)")
    groups = duplicate_groups(plan, max_groups, max_members)
    edge = borderline_pairs(plan, max_borderline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("page-*.html"):  # pages of an earlier, longer report would dangle
        stale.unlink()
    thumbs = out / "thumbs"
    if not inline and (groups or edge):
        thumbs.mkdir(exist_ok=True)
    n_dup_groups = int(np.count_nonzero(plan.group_sizes() > 1))
    pages = max(1, -(-len(groups) // groups_per_page))
    written = []
    css = _CSS.replace("THUMB", str(thumb_size))
    for page in range(pages):
        chunk = groups[page * groups_per_page:(page + 1) * groups_per_page]
        body = [f"<h1>{html.escape(title)}</h1>", _summary_html(plan, len(groups), n_dup_groups), _nav(page, pages)]
        if page == 0:
            body.append(_sweep_html(plan))
            body.append(_borderline_html(plan, edge, image_of, paths, class_names, thumbs, thumb_size, inline))
        if not groups:
            body.append("<p class=\"empty\">No near-duplicates at this threshold.</p>")
        for g in chunk:
            body.append(_group_html(plan, g, image_of, paths, class_names, thumbs, thumb_size, inline))
        body.append(_nav(page, pages))
        doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               f"<title>{html.escape(title)}</title><style>{css}</style><script>{_SCRIPT}</script></head>\n"
               "<body>\n" + "\n".join(body) + "\n</body></html>\n")
        path = out / _page_name(page)
        path.write_text(doc, encoding="utf-8")
        written.append(path)
    logger.info("report: %d groups on %d page(s) in %s", len(groups), pages, out)
    return written


def _summary_html(plan: DedupPlan, shown: int, total: int) -> str:
    s = plan.settings
    how = ", ".join(f"{k} {html.escape(str(s[k]))}" for k in ("method", "hash_size") if k in s)
    return (f"<p class=\"meta\">{plan.n} items, threshold {plan.threshold}, policy {plan.policy}"
            f"{', per class' if plan.per_class else ''}{', ' + how if how else ''}: "
            f"kept {plan.n_kept} ({100 * plan.n_kept / max(plan.n, 1):.1f}%). "
            f"{total} groups with duplicates; showing {shown}, largest first. "
            "Green border: kept; red: removed; orange label: differs from the kept item's.</p>")


def _figure_html(plan, i: int, d: int, kept_item: int, image_of, paths, class_names, thumbs: Path,
                 thumb_size: int, inline: bool) -> str:
    """One thumbnail with its caption: index (and path), distance to ``kept_item``, label."""
    im = _thumbnail(image_of(i), thumb_size)
    if inline:
        src = "data:image/png;base64," + base64.b64encode(_png_bytes(im)).decode("ascii")
    else:
        im.save(thumbs / f"{i}.png")
        src = f"thumbs/{i}.png"
    kept = i == kept_item
    cap = [f"<span class=\"badge\">KEPT</span> #{i}" if kept else f"#{i} &middot; d={d}"]
    if paths is not None:
        p = str(paths[i])
        cap.append(f"<span title=\"{html.escape(p)}\">{html.escape(os.path.basename(p))}</span>")
    label = _label_text(plan, i, class_names)
    if label is not None:
        differs = int(plan.labels[i]) != int(plan.labels[kept_item])
        attrs = ' class="label differs" title="label differs from the kept item"' if differs else ' class="label"'
        cap.append(f"<span{attrs}>{html.escape(label)}</span>")
    alt = f"item {i}" + (" (kept)" if kept else f", distance {d}")
    return (f"<figure class=\"{'kept' if kept else 'removed'}\" data-index=\"{i}\" data-distance=\"{d}\">"
            f"<img src=\"{src}\" alt=\"{html.escape(alt)}\"><figcaption>{'<br>'.join(cap)}</figcaption></figure>")


def _sweep_html(plan: DedupPlan) -> str:
    """Pairs and kept items per threshold (the plan's sweep), the plan's threshold marked; "" without a sweep."""
    if plan.sweep is None:
        return ""
    cos = threshold_cosines(plan)
    pairs_at = None if plan.sweep_pairs is None else plan.sweep_pairs.tolist()
    within = None if plan.sweep_pairs is None else plan.sweep_pairs_within.tolist()
    n_valid = max(plan.n - int(np.count_nonzero(plan.failed)), 1)
    head = (["threshold"] + (["cosine"] if cos else []) + (["pairs at d", "pairs within t"] if pairs_at else [])
            + ["kept", "removed"])
    rows = []
    for t, k in enumerate(plan.sweep.tolist()):
        cells = ([str(t)] + ([f"{cos[t]:.3f}"] if cos else []) + ([str(pairs_at[t]), str(within[t])] if pairs_at
                                                                  else [])
                 + [str(k), f"{100 * (1 - k / n_valid):.2f}%"])
        chosen = ' class="chosen"' if t == plan.threshold else ""
        rows.append(f"<tr data-threshold=\"{t}\"{chosen}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    hint = ("Pairs at d: item pairs exactly d bits apart; pairs within t: the near-duplicate pairs threshold t "
            "joins (highlighted: this report's threshold). As t grows into distances where images are merely "
            "alike, pairs come in faster than duplicates do: the borderline pairs below show whether that has "
            "started at this threshold. See docs/thresholds.md.")
    return ("<section class=\"sweep\"><h2>By threshold</h2>"
            f"<p class=\"hint\">{html.escape(hint)}</p><table class=\"sweep\"><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table></section>")


def _borderline_html(plan, edge: list[BorderlinePair], image_of, paths, class_names, thumbs: Path, thumb_size: int,
                     inline: bool) -> str:
    if not edge:
        return ""
    t = plan.threshold
    pairs = []
    for p in edge:
        figs = "".join(_figure_html(plan, i, d, p.kept, image_of, paths, class_names, thumbs, thumb_size, inline)
                       for i, d in ((p.kept, 0), (p.removed, p.distance)))
        pairs.append(f"<div class=\"pair\" data-kept=\"{p.kept}\" data-removed=\"{p.removed}\" "
                     f"data-distance=\"{p.distance}\"><h3>d={p.distance}</h3>{figs}</div>")
    n_edge = len(borderline_pairs(plan))
    beyond = " (or beyond it, joined through a chain)" if plan.policy == "components" else ""
    hint = (f"Items removed at distance {t}{f' or {t - 1}' if t else ''}{beyond} from the item kept for them, "
            f"farthest first (showing {len(edge)} of {n_edge}): the removals a lower threshold would undo. If these "
            "are true duplicates, the threshold is not too high; if they are different images, lower it.")
    return (f"<section class=\"borderline\"><h2>Borderline pairs at threshold {t}</h2>"
            f"<p class=\"hint\">{html.escape(hint)}</p><div class=\"items\">{''.join(pairs)}</div></section>")


def _group_html(plan, g: ReportGroup, image_of, paths, class_names, thumbs: Path, thumb_size: int,
                inline: bool) -> str:
    figs = [_figure_html(plan, i, d, g.kept, image_of, paths, class_names, thumbs, thumb_size, inline)
            for i, d in zip(g.members.tolist(), g.distances.tolist())]
    if g.size > len(g.members):
        figs.append(f"<span class=\"more\">&hellip; and {g.size - len(g.members)} more</span>")
    return (f"<section class=\"group\" data-rank=\"{g.rank}\" data-kept=\"{g.kept}\" data-size=\"{g.size}\">"
            f"<h2>Group {g.rank + 1}: {g.size} items, kept #{g.kept}</h2>"
            f"<div class=\"items\">{''.join(figs)}</div></section>")


def write_contact_sheet(plan: DedupPlan, image_of: Callable[[int], Any], path: str | os.PathLike, *,
                        max_groups: int = 12, per_group: int = 10, thumb_size: int = 64) -> Path:
    """One PNG with a row per duplicate group (largest first): the kept item framed green, then the removed.

    Each thumbnail is captioned ``#index`` and, for removed items, ``d=distance``.

    Args:
        plan: the plan.
        image_of: ``image_of(i)`` -> raw image of item ``i``.
        path: the PNG to write (its folder is created).
        max_groups: rows.
        per_group: thumbnails per row at most (the row ends with ``+k`` when cut).
        thumb_size: thumbnail side in pixels.

    Returns:
        The path written.

    Raises:
        ValueError: a bad option.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> plan = find_duplicates(np.array([0, 1], dtype=np.uint64), threshold=1)
        >>> p = write_contact_sheet(plan, lambda i: np.zeros((8, 8), np.uint8),
        ...                         os.path.join(tempfile.mkdtemp(), "s.png"))
        >>> p.suffix
        '.png'
    """
    for name, v, lo in (("max_groups", max_groups, 1), ("per_group", per_group, 2), ("thumb_size", thumb_size, 16)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} must be an int >= {lo}")
    groups = duplicate_groups(plan, max_groups, per_group)
    font = ImageFont.load_default()
    pad, cap_h, head_w = 4, 14, 110
    cell_w, cell_h = thumb_size + 2 * pad, thumb_size + 2 * pad + cap_h
    width = head_w + per_group * cell_w + 40
    height = max(1, len(groups)) * cell_h + 2 * pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if not groups:
        draw.text((pad, pad), f"no near-duplicates at threshold {plan.threshold}", fill="black", font=font)
    for row, g in enumerate(groups):
        y = pad + row * cell_h
        draw.text((pad, y + thumb_size // 2 - 6), f"group {g.rank + 1}: {g.size}", fill="black", font=font)
        for col, (i, d) in enumerate(zip(g.members.tolist(), g.distances.tolist())):
            x = head_w + col * cell_w
            im = to_pil(image_of(i)).convert("RGB")
            scale = thumb_size / max(im.size)
            resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
            frame = (46, 139, 87) if i == g.kept else (217, 83, 79)
            draw.rectangle([x, y, x + thumb_size + 2 * pad - 1, y + thumb_size + 2 * pad - 1], outline=frame, width=3)
            sheet.paste(im, (x + pad + (thumb_size - im.width) // 2, y + pad + (thumb_size - im.height) // 2))
            cap = f"#{i} kept" if i == g.kept else f"#{i} d={d}"
            draw.text((x + pad, y + thumb_size + 2 * pad), cap, fill="black", font=font)
        if g.size > len(g.members):
            draw.text((head_w + len(g.members) * cell_w + pad, y + thumb_size // 2 - 6),
                      f"+{g.size - len(g.members)}", fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
