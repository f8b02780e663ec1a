"""``torch-dedup report`` over webdataset shards: the same HTML gallery and contact sheet as for folders."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from torch_dedup.cli import main
from torch_dedup.report import duplicate_groups
from torch_dedup.wds import plan_shards
from torch_dedup.wds.shard_images import SampleNames, ShardImages
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture
def shards(tmp_path):
    make_demo_shards(tmp_path / "s", n_shards=3, per_shard=20, dup_fraction=0.4, no_image_every=9, seed=4)
    return str(tmp_path / "s" / "shard-{000000..000002}.tar")


def test_report_over_shards_writes_the_gallery(shards, tmp_path, capsys):
    rc = main(["report", shards, "--out", str(tmp_path / "r"), "--workers", "0", "--no-progress", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["n_groups_with_duplicates"] > 0 and info["n_shards"] == 3
    plan = plan_shards(shards, 6, workers=0, progress=False)
    html = (tmp_path / "r" / "index.html").read_text()
    names = SampleNames(plan)
    for g in duplicate_groups(plan.plan, 5):
        for i in g.members.tolist():
            assert names[i] in html  # every shown sample named shard:key
    thumbs = list((tmp_path / "r" / "thumbs").glob("*.png"))
    assert len(thumbs) >= sum(len(g.members) for g in duplicate_groups(plan.plan))
    assert Image.open(info["contact_sheet"]).size[0] > 0


def test_report_over_shards_with_a_saved_plan(shards, tmp_path, capsys):
    path = plan_shards(shards, 6, workers=0, progress=False, out=tmp_path / "p.tdplan").path
    assert main(["report", shards, "--plan", path, "--out", str(tmp_path / "r"), "-q"]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    other = make_demo_shards(tmp_path / "o", n_shards=1, per_shard=5, seed=9)[0]
    assert main(["report", other, "--plan", path, "--out", str(tmp_path / "r2")]) == 2
    assert "other shard" in capsys.readouterr().err


def test_shard_images_reads_the_planned_images(shards):
    plan = plan_shards(shards, 6, workers=0, progress=False)
    g = duplicate_groups(plan.plan, 1)[0]
    image_of = ShardImages(plan, g.members.tolist())
    assert all(image_of(i).size[0] > 0 for i in g.members.tolist())
    assert len(image_of._read) <= len(plan.shards)
    with pytest.raises(ValueError, match="wanted"):
        image_of(int(plan.n - 1) if int(plan.n - 1) not in g.members else 0)
