"""The visual reports: HTML gallery (checked structurally and in headless chromium) and contact sheet."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torchvision
from PIL import Image
from test_cli import run, smooth_image

from torch_dedup.cli import main
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.hashing import hash_array
from torch_dedup.report import (
    borderline_pairs,
    duplicate_groups,
    threshold_cosines,
    to_pil,
    write_contact_sheet,
    write_html_report,
)
from torch_dedup.embedded import CLASSES, load_sample


class Page(HTMLParser):
    """Groups, borderline pairs, the by-threshold table, figures, images and page links of one report page."""

    def __init__(self, path: Path):
        super().__init__()
        self.groups, self.pairs, self.rows, self.imgs, self.links = [], [], [], [], []
        self._fig = self._box = self._row = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("class") == "group":
            self._box = {"kept": int(a["data-kept"]), "size": int(a["data-size"]), "figures": []}
            self.groups.append(self._box)
        elif tag == "div" and a.get("class") == "pair":
            self._box = {"kept": int(a["data-kept"]), "removed": int(a["data-removed"]),
                         "distance": int(a["data-distance"]), "figures": []}
            self.pairs.append(self._box)
        elif tag == "tr" and "data-threshold" in a:
            self._row = {"threshold": int(a["data-threshold"]), "chosen": a.get("class") == "chosen", "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._row["cells"].append("")
        elif tag == "figure":
            self._fig = {"class": a["class"], "index": int(a["data-index"]), "distance": int(a["data-distance"]),
                         "text": ""}
            self._box["figures"].append(self._fig)
        elif tag == "img":
            self.imgs.append(a["src"])
            if self._fig is not None:
                self._fig["src"] = a["src"]
        elif tag == "a" and a.get("rel") in ("next", "prev"):
            self.links.append((a["rel"], a["href"]))

    def handle_endtag(self, tag):
        if tag == "figure":
            self._fig = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._fig is not None:
            self._fig["text"] += data
        elif self._row is not None and self._row["cells"]:
            self._row["cells"][-1] += data


def open_src(src: str, folder: Path) -> Image.Image:
    if src.startswith("data:"):
        m = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:60]
        im = Image.open(io.BytesIO(base64.b64decode(m.group(1), validate=True)))
    else:
        assert not re.match(r"^[a-z]+://", src) and not src.startswith("/"), src  # relative: no network
        im = Image.open(folder / src)
    im.load()
    return im


T = 6


@pytest.fixture(scope="module")
def folder_report(tmp_path_factory):
    """An ImageFolder with two planted groups, its report (1 group per page) and the oracle distances."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("imgs")
    for cls in ("a", "b"):
        (root / cls).mkdir()
    for k in range(6):
        smooth_image(rng).save(root / "a" / f"{k:02d}.png")
        smooth_image(rng).save(root / "b" / f"{k:02d}.png")
    with Image.open(root / "a/00.png") as im:  # group of 3 around a/00: a resized copy, a brightened one in class b
        im.resize((48, 48), Image.Resampling.LANCZOS).save(root / "a/01.png")
        Image.fromarray(np.clip(np.asarray(im, np.int16) + 5, 0, 255).astype(np.uint8)).save(root / "b/05.png")
    with Image.open(root / "b/01.png") as im:  # group of 2
        im.resize((80, 80), Image.Resampling.BICUBIC).save(root / "b/03.png")
    out = tmp_path_factory.mktemp("report")
    r = run("report", str(root), "-t", str(T), "--out", str(out), "--per-page", "1", "--json", "--no-progress",
            "--workers", "0", "--cache-dir", str(out.parent / "cache"))
    assert r.returncode == 0, r.stderr
    ds = torchvision.datasets.ImageFolder(str(root))
    hashes = [imagehash.phash(Image.open(p)) for p, _ in ds.samples]
    return root, out, json.loads(r.stdout), ds, hashes


def test_folder_report_structure(folder_report):
    _, out, info, ds, hashes = folder_report
    # oracle: greedy over imagehash distances in dataset order
    kept, groups = [], {}
    for i, h in enumerate(hashes):
        rep = next((k for k in kept if hashes[k] - h <= T), None)
        if rep is None:
            kept.append(i)
            groups[i] = [i]
        else:
            groups[rep].append(i)
    want = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
    assert [len(g) for g in want] == [3, 2]
    assert info["n_groups_with_duplicates"] == 2 and info["groups_shown"] == 2 and info["n_kept"] == len(kept)
    assert [Path(p).name for p in info["pages"]] == ["index.html", "page-2.html"]
    seen = []
    for page_no, page_path in enumerate(info["pages"]):
        page = Page(Path(page_path))
        assert len(page.groups) == 1
        g = page.groups[0]
        assert g["size"] == len(want[page_no]) and g["kept"] == want[page_no][0]
        figs = g["figures"]
        assert figs[0]["index"] == g["kept"] and figs[0]["class"] == "kept" and "KEPT" in figs[0]["text"]
        assert all(f["class"] == "removed" for f in figs[1:])
        assert sorted(f["index"] for f in figs) == want[page_no]
        for f in figs:
            assert f["distance"] == hashes[f["index"]] - hashes[g["kept"]]
            path, label = ds.samples[f["index"]]
            assert Path(path).name in f["text"] and ds.classes[label] in f["text"]
            with open_src(f["src"], out) as im:
                assert im.size[0] > 0
        assert len(page.imgs) == len(figs) + 2 * len(page.pairs)
        seen.append(page.links)
    assert seen == [[("next", "page-2.html")] * 2, [("prev", "index.html")] * 2]  # nav above and below
    with Image.open(info["contact_sheet"]) as sheet:
        assert sheet.format == "PNG" and sheet.height >= 2 * 64


def test_folder_report_pairs_by_threshold_match_imagehash(folder_report):
    _, _, info, _, hashes = folder_report
    top = T + max(2, T // 2)  # the report's default sweep
    d = [hashes[i] - hashes[j] for i in range(len(hashes)) for j in range(i + 1, len(hashes))]
    want = np.bincount(np.array(d, np.int64), minlength=65)[:top + 1]
    assert info["sweep_max"] == top and info["sweep_pairs"] == want.tolist()
    rows = Page(Path(info["pages"][0])).rows
    assert [r["threshold"] for r in rows] == list(range(top + 1))
    assert [r["threshold"] for r in rows if r["chosen"]] == [T]
    assert [int(r["cells"][1]) for r in rows] == want.tolist()  # threshold, pairs at d, pairs within t, ...
    assert [int(r["cells"][2]) for r in rows] == np.cumsum(want).tolist()
    assert not Page(Path(info["pages"][1])).rows  # the table is on the first page only


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample-report")
    r = run("report", "sample", "-t", "8", "--out", str(out), "--inline", "--max-groups", "3", "--per-page", "2",
            "--max-members", "10", "--json", "--no-progress", "--cache-dir", str(out.parent / "cache"))
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_sample_report_inline_matches_python_api(sample_report):
    out, info = sample_report
    images, labels = load_sample()
    plan = find_duplicates(hash_array(images), 8, labels=labels)
    top = plan.largest_groups(3)
    assert info["n_groups_with_duplicates"] == int((plan.group_sizes() > 1).sum()) and info["groups_shown"] == 3
    pages = [Page(Path(p)) for p in info["pages"]]
    assert [len(p.groups) for p in pages] == [2, 1]
    groups = [g for p in pages for g in p.groups]
    assert [(g["kept"], g["size"]) for g in groups] == [(k, len(m)) for k, m in top]
    assert not (out / "thumbs").exists()
    for g, (k, members) in zip(groups, top):
        assert len(g["figures"]) == 10  # --max-members
        assert {f["index"] for f in g["figures"]} <= set(members.tolist())
        dists = [f["distance"] for f in g["figures"]]
        assert dists[0] == 0 and dists[1:] == sorted(dists[1:])
        for f in g["figures"]:
            assert f["distance"] == plan.distance_to_rep[f["index"]]
            assert CLASSES[labels[f["index"]]] in f["text"]
            with open_src(f["src"], out) as im:  # a valid PNG data: URI of the very image
                np.testing.assert_array_equal(np.asarray(im), images[f["index"]])
    # the first page opens with the borderline pairs at t=8 (phash distances are even here: all at 8)
    swept = find_duplicates(hash_array(images), 8, labels=labels, sweep_max=12)
    assert info["sweep_pairs"] == swept.sweep_pairs.tolist() and info["borderline_shown"] == 24
    edge = pages[0].pairs
    assert [(p["kept"], p["removed"], p["distance"]) for p in edge] == [tuple(b) for b in borderline_pairs(plan, 24)]
    for p in edge:
        assert [(f["index"], f["class"], f["distance"]) for f in p["figures"]] == \
            [(p["kept"], "kept", 0), (p["removed"], "removed", p["distance"])]
        assert p["distance"] in (7, 8) and plan.representative[p["removed"]] == p["kept"]
    assert not pages[1].pairs


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _loaded_in_chromium(page: Path, profile: Path) -> tuple[int, int]:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
                        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                        page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, r.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z]+)="(\d+)"', body.group(1)))
    assert "data-loaded" in attrs, f"the page's load script did not run: {body.group(0)}"
    return int(attrs["data-images"]), int(attrs["data-loaded"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_every_thumbnail_loads_in_headless_chromium(folder_report, sample_report, tmp_path):
    pages = [Path(p) for p in folder_report[2]["pages"] + sample_report[1]["pages"]]
    for k, page in enumerate(pages):
        n_img, n_loaded = _loaded_in_chromium(page, tmp_path / f"profile{k}")
        assert n_img == len(Page(page).imgs) > 0
        assert n_loaded == n_img, f"{page}: {n_loaded} of {n_img} images loaded"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_check_can_fail_on_a_missing_thumbnail(folder_report, tmp_path):
    """The browser check is not vacuous: a page with a deleted thumbnail reports fewer loaded images."""
    out = tmp_path / "copy"
    shutil.copytree(folder_report[1], out)
    victim = next((out / "thumbs").iterdir())
    victim.unlink()
    n_img, n_loaded = _loaded_in_chromium(out / "index.html", tmp_path / "profile")
    n_img2, n_loaded2 = _loaded_in_chromium(out / "page-2.html", tmp_path / "profile2")
    assert n_loaded + n_loaded2 == n_img + n_img2 - 1


# --------------------------------------------------------------------------- library level
def test_duplicate_groups_order_and_caps():
    h = np.array([0, 1, 0xFF00, 3, 0xFF01, 0xF0F0F0F0, 7], dtype=np.uint64)
    plan = find_duplicates(h, threshold=2)
    groups = duplicate_groups(plan)
    assert [(g.kept, g.size, g.members.tolist(), g.distances.tolist()) for g in groups] == \
        [(0, 3, [0, 1, 3], [0, 1, 2]), (2, 2, [2, 4], [0, 1])]
    assert [g.members.tolist() for g in duplicate_groups(plan, max_groups=1, max_members=2)] == [[0, 1]]
    with pytest.raises(ValueError, match="max_groups"):
        duplicate_groups(plan, max_groups=0)


def test_borderline_pairs_are_the_removals_at_the_edge():
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 2**64, 20, dtype=np.uint64)
    flips = [np.uint64(0)] + [np.uint64((1 << k) - 1) for k in range(1, 7)]  # 0..6 bits from a centre
    h = (centres[:, None] ^ np.array(flips, np.uint64)[None, rng.permutation(7)]).reshape(-1)
    for policy in ("greedy", "components"):
        plan = find_duplicates(h, 4, policy=policy)
        want = sorted(((int(plan.representative[i]), int(i), int(plan.distance_to_rep[i]))
                       for i in plan.removed_indices if plan.distance_to_rep[i] >= 3), key=lambda p: (-p[2], p[1]))
        got = borderline_pairs(plan)
        assert [tuple(p) for p in got] == want and want
        assert all(p.distance in (3, 4) for p in got) or policy == "components"
        assert [tuple(p) for p in borderline_pairs(plan, 3)] == want[:3]
        assert [p.distance for p in borderline_pairs(plan, below=0)] == [d for *_, d in want if d >= 4]
    with pytest.raises(ValueError, match="max_pairs"):
        borderline_pairs(plan, -1)
    with pytest.raises(ValueError, match="below"):
        borderline_pairs(plan, below=-1)


def test_html_report_shows_the_threshold_choice(tmp_path):
    """Generated images: the table of pairs and kept items per threshold, and the borderline gallery."""
    rng = np.random.default_rng(11)
    n = 40
    images = (rng.random((n, 12, 12)) * 255).astype(np.uint8)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    h[1::2] = h[0::2] ^ np.uint64(0b111)  # pairs at 3 bits ...
    h[3::4] = h[2::4] ^ np.uint64(0b11)   # ... and at 2
    plan = find_duplicates(h, 3, sweep_max=5, settings={"method": "phash", "hash_size": 8})
    page = Page(write_html_report(plan, lambda i: images[i], tmp_path / "r", max_borderline=4)[0])
    assert [r["threshold"] for r in page.rows] == list(range(6)) and [r["chosen"] for r in page.rows].count(True) == 1
    assert page.rows[3]["chosen"]
    cells = [r["cells"] for r in page.rows]
    assert [int(c[1]) for c in cells] == plan.sweep_pairs.tolist() == [0, 0, 10, 10, 0, 0]
    assert [int(c[2]) for c in cells] == plan.sweep_pairs_within.tolist()
    assert [int(c[3]) for c in cells] == plan.sweep.tolist()
    assert [(p["kept"], p["removed"], p["distance"]) for p in page.pairs] == \
        [tuple(b) for b in borderline_pairs(plan, 4)]
    assert all(p["distance"] == 3 for p in page.pairs)
    for p in page.pairs:
        with open_src(p["figures"][1]["src"], tmp_path / "r") as im:
            np.testing.assert_array_equal(np.asarray(im), images[p["removed"]])
    # none asked for, and a plan without a sweep: neither section
    bare = Page(write_html_report(find_duplicates(h, 3), lambda i: images[i], tmp_path / "b", max_borderline=0)[0])
    assert not bare.pairs and not bare.rows and len(bare.groups) == 20
    with pytest.raises(ValueError, match="max_borderline"):
        write_html_report(plan, lambda i: images[i], tmp_path / "x", max_borderline=-1)


def test_threshold_cosines_only_for_hyperplane_codes(tmp_path):
    h = np.zeros((3, 4), np.uint64)
    assert threshold_cosines(find_duplicates(h, 2, settings={"method": "phash"})) is None
    hyper = find_duplicates(h, 2, sweep_max=4, settings={"method": "colour_dct"})
    assert threshold_cosines(hyper) == pytest.approx([np.cos(np.pi * t / 256) for t in range(5)])
    assert threshold_cosines(find_duplicates(h, 2, settings={"method": "embed"}), 1) == pytest.approx([1.0, 0.99992470])
    rows = Page(write_html_report(hyper, lambda i: np.zeros((4, 4), np.uint8), tmp_path)[0]).rows
    assert [float(r["cells"][1]) for r in rows] == [round(c, 3) for c in threshold_cosines(hyper)]


def test_report_without_duplicates_and_contact_sheet(tmp_path):
    plan = find_duplicates(np.array([0, 0xFFFF], dtype=np.uint64), threshold=2)
    pages = write_html_report(plan, lambda i: np.zeros((4, 4), np.uint8), tmp_path)
    assert [p.name for p in pages] == ["index.html"] and "No near-duplicates" in pages[0].read_text()
    assert Page(pages[0]).imgs == []
    sheet = write_contact_sheet(plan, lambda i: np.zeros((4, 4), np.uint8), tmp_path / "s.png")
    with Image.open(sheet) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="thumb_size"):
        write_html_report(plan, lambda i: None, tmp_path, thumb_size=2)


def test_to_pil_accepts_the_raw_image_forms(tmp_path):
    hwc = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(np.asarray(to_pil(hwc)), hwc)
    np.testing.assert_array_equal(np.asarray(to_pil(np.ascontiguousarray(hwc.transpose(2, 0, 1)))), hwc)
    np.testing.assert_array_equal(np.asarray(to_pil(hwc[..., :1])), hwc[..., 0])
    assert to_pil(np.full((3, 3), 1.0, np.float32)).getpixel((0, 0)) == 255
    Image.fromarray(hwc).save(tmp_path / "x.png")
    np.testing.assert_array_equal(np.asarray(to_pil(str(tmp_path / "x.png"))), hwc)
    assert to_pil(Image.new("RGBA", (2, 2))).mode == "RGB"


def test_report_from_saved_plan_and_mismatch(tmp_path, capsys):
    images, labels = load_sample(300)
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    plan = find_duplicates(hash_array(images), 8, labels=labels)
    plan.save(tmp_path / "plan.tdp")
    assert main(["report", str(tmp_path / "s.npz"), "--plan", str(tmp_path / "plan.tdp"), "--out",
                 str(tmp_path / "r"), "--quiet", "--no-progress"]) == 0
    page = Page(tmp_path / "r" / "index.html")
    assert [g["kept"] for g in page.groups] == [k for k, m in plan.largest_groups(len(page.groups))]
    assert main(["report", "sample", "--plan", str(tmp_path / "plan.tdp"), "--out", str(tmp_path / "r2"),
                 "--no-progress"]) == 2
    assert "recompute the plan" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--borderline", "-1"], "--borderline -1"),
    (["-t", "6", "--max-threshold", "3"], "--max-threshold 3: must be in [6, 64]"),
    (["--max-threshold", "9", "--plan", "p.tdp"], "--plan"),
])
def test_report_threshold_flags_are_checked(tmp_path, capsys, extra, needle):
    assert main(["report", "sample", "--out", str(tmp_path / "r"), "--no-progress", *extra]) == 2
    assert needle in capsys.readouterr().err
