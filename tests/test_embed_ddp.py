"""``embed_dataset_distributed``: each item embedded once across ``torch.distributed`` ranks, the one-process codes.

The oracle is :func:`torch_dedup.embedding.embed_dataset` in one process with the same model
(built after ``torch.manual_seed``, so every process has the same weights). The two-rank runs
are real gloo process groups in spawned processes (tests/ddp_utils.py).
"""

from __future__ import annotations

import itertools
import json
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from torch_dedup import embedding, plan_dataset
from torch_dedup.embedded import load_sample
from torch_dedup.embedding import embed_dataset, embed_dataset_distributed

N, N_TEST, BATCH, BITS = 72, 20, 16, 128
WHITE = 50  # an item of rank 1's share (items 32..71 of 72 in batches of 16 over 2 ranks)


class Net(torch.nn.Module):
    """A small CNN whose weights come from ``seed``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.features(x)


class Picky(Net):
    """Raises on an all-white image: a model error on one rank's share only."""

    def forward(self, x):
        if (x.flatten(1).amin(1) >= 1).any():
            raise ValueError("Picky cannot embed a white image")
        return super().forward(x)


class Toy(torch.utils.data.Dataset):
    """An array dataset (``.data`` uint8), read by torch_dedup without ``__getitem__``."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.targets = list(range(len(data)))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


def _data() -> tuple[Toy, Toy, Toy]:
    images = load_sample(N + N_TEST)[0]
    white = images[:N].copy()
    white[WHITE] = 255
    return Toy(images[:N]), Toy(images[N:]), Toy(white)


def _outcome(fn) -> dict:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test reads the type and message
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None}


def _rank(rank: int, out: str, init: str) -> None:
    out_p = Path(out)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    report: dict = {}
    try:
        train, test, white = _data()
        net = Net(0)
        kw = {"batch_size": BATCH, "bits": BITS, "progress": False}
        h = embed_dataset_distributed(train, net, cache_dir=out_p / "cache", **kw)
        np.save(out_p / f"codes_{rank}.npy", h.hashes)
        np.save(out_p / f"emb_{rank}.npy", h.embeddings)
        report.update(fit=h.fit.fingerprint, from_cache=h.from_cache, sidecar=str(h.sidecar_path))
        again = embed_dataset_distributed(train, net, cache_dir=out_p / "cache", **kw)
        np.save(out_p / f"again_{rank}.npy", again.hashes)
        report.update(again_from_cache=again.from_cache, again_fit=again.fit.fingerprint,
                      again_sidecar=str(again.sidecar_path))
        te = embed_dataset_distributed(test, net, fit=h.fit, cache_dir=False, **kw)
        np.save(out_p / f"test_{rank}.npy", te.hashes)
        report["test_fit"] = te.fit.fingerprint
        report["model_error"] = _outcome(lambda: embed_dataset_distributed(white, Picky(0), cache_dir=False, **kw))
        report["weights"] = _outcome(lambda: embed_dataset_distributed(train, Net(rank), cache_dir=False, **kw))
        # after the failures the group still works: nobody was left waiting in a collective
        report["after"] = embed_dataset_distributed(test, net, cache_dir=False, **kw).fit.fingerprint
        # plan_dataset(embed=) under DDP: once across the ranks, against= in the train fit's space
        plan = plan_dataset(train, embed=net, hash_size=16, threshold=24, against=test, cache_dir=False,
                            progress=False)
        np.save(out_p / f"plan_keep_{rank}.npy", plan.keep)
        np.save(out_p / f"plan_leaked_{rank}.npy", plan.leaked)
        # fuse=True: the colour_dct fit made on rank 0, the embedding once across the ranks, one fusion
        fused = plan_dataset(train, embed=net, fuse=True, embed_bits=BITS, method="colour_dct", hash_size=16,
                             threshold=60, against=test, cache_dir=False, progress=False)
        np.save(out_p / f"fused_keep_{rank}.npy", fused.keep)
        np.save(out_p / f"fused_leaked_{rank}.npy", fused.leaked)
        report["fused"] = [fused.provenance["fit"], fused.provenance["fusion"]]
        # views=: the fit on rank 0, the own codes and the views each coded in shares, one file
        vplan = plan_dataset(train, method="colour_dct", hash_size=16, views="shift", threshold=20, against=test,
                             cache_dir=out_p / "vcache", progress=False)
        np.save(out_p / f"views_keep_{rank}.npy", vplan.keep)
        np.save(out_p / f"views_leaked_{rank}.npy", vplan.leaked)
        again = plan_dataset(train, method="colour_dct", hash_size=16, views="shift", threshold=20, against=test,
                             cache_dir=out_p / "vcache", progress=False)
        report["views"] = [vplan.provenance["views_file"], again.provenance["views_from_cache"]]
    except Exception:  # noqa: BLE001 - the test reads the traceback
        report["error"] = traceback.format_exc()
    finally:
        (out_p / f"report_{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_one_process_codes_share_the_cache_and_raise_together(tmp_path):
    from ddp_utils import run_ranks

    reports = run_ranks(_rank, (str(tmp_path), f"file://{tmp_path / 'rdv'}"), tmp_path)
    torch.set_num_threads(1)
    train, test, _ = _data()
    net = Net(0)
    one = embed_dataset(train, net, batch_size=BATCH, bits=BITS, cache_dir=False, progress=False)
    one_test = embed_dataset(test, net, fit=one.fit, batch_size=BATCH, cache_dir=False, progress=False)
    own_test = embed_dataset(test, net, batch_size=BATCH, bits=BITS, cache_dir=False, progress=False)
    for r, rep in enumerate(reports):
        np.testing.assert_array_equal(np.load(tmp_path / f"codes_{r}.npy"), one.hashes)
        np.testing.assert_array_equal(np.load(tmp_path / f"emb_{r}.npy"), one.embeddings)
        np.testing.assert_array_equal(np.load(tmp_path / f"again_{r}.npy"), one.hashes)
        np.testing.assert_array_equal(np.load(tmp_path / f"test_{r}.npy"), one_test.hashes)
        assert rep["fit"] == rep["again_fit"] == rep["test_fit"] == one.fit.fingerprint
        assert not rep["from_cache"] and rep["again_from_cache"]
        assert rep["sidecar"] == rep["again_sidecar"] == reports[0]["sidecar"] != "None"
        assert rep["model_error"]["type"] == "ValueError"
        assert "on rank 1" in rep["model_error"]["message"] and "white image" in rep["model_error"]["message"]
        assert rep["weights"]["type"] == "DedupError" and "same weights" in rep["weights"]["message"]
        assert rep["after"] == own_test.fit.fingerprint
    one_plan = plan_dataset(train, embed=net, hash_size=16, threshold=24, against=test, cache_dir=False,
                            progress=False, distributed=False)
    for r in range(len(reports)):
        np.testing.assert_array_equal(np.load(tmp_path / f"plan_keep_{r}.npy"), one_plan.keep)
        np.testing.assert_array_equal(np.load(tmp_path / f"plan_leaked_{r}.npy"), one_plan.leaked)
    one_views = plan_dataset(train, method="colour_dct", hash_size=16, views="shift", threshold=20, against=test,
                             cache_dir=False, progress=False, distributed=False)
    one_fused = plan_dataset(train, embed=net, fuse=True, embed_bits=BITS, method="colour_dct", hash_size=16,
                             threshold=60, against=test, cache_dir=False, progress=False, distributed=False)
    for r, rep in enumerate(reports):
        np.testing.assert_array_equal(np.load(tmp_path / f"fused_keep_{r}.npy"), one_fused.keep)
        np.testing.assert_array_equal(np.load(tmp_path / f"fused_leaked_{r}.npy"), one_fused.leaked)
        assert rep["fused"] == [one_fused.provenance["fit"], one_fused.provenance["fusion"]]
        np.testing.assert_array_equal(np.load(tmp_path / f"views_keep_{r}.npy"), one_views.keep)
        np.testing.assert_array_equal(np.load(tmp_path / f"views_leaked_{r}.npy"), one_views.leaked)
        assert rep["views"][0] == reports[0]["views"][0] != "None" and rep["views"][1] is True
    assert len(list((tmp_path / "cache").rglob("embed-*"))) == 1


@pytest.fixture()
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv1'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_one_rank_group_equals_embed_dataset(one_rank_group, tmp_path):
    train, test, white = _data()
    net = Net(0)
    kw = {"batch_size": BATCH, "bits": BITS, "progress": False}
    one = embed_dataset(train, net, cache_dir=False, **kw)
    h = embed_dataset_distributed(train, net, cache_dir=tmp_path, **kw)
    np.testing.assert_array_equal(h.hashes, one.hashes)
    assert h.fit.fingerprint == one.fit.fingerprint and not h.from_cache and h.sidecar_path is not None
    again = embed_dataset_distributed(train, net, cache_dir=tmp_path, **kw)
    assert again.from_cache and again.sidecar_path == h.sidecar_path
    np.testing.assert_array_equal(again.hashes, one.hashes)
    read = embed_dataset(train, net, cache_dir=tmp_path, **kw)  # the one-process call reads the same sidecar
    assert read.from_cache and read.fit.fingerprint == one.fit.fingerprint
    te = embed_dataset_distributed(test, net, fit=h.fit, cache_dir=False, **kw)
    assert te.fit is h.fit
    np.testing.assert_array_equal(te.hashes, embed_dataset(test, net, fit=one.fit, cache_dir=False, **kw).hashes)
    with pytest.raises(ValueError, match="on rank 0.*white image"):
        embed_dataset_distributed(white, Picky(0), cache_dir=False, **kw)


def test_needs_an_initialised_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="dist.init_process_group"):
        embed_dataset_distributed(Toy(np.zeros((2, 8, 8), np.uint8)), Net(0))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 72, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_are_whole_batches_covering_every_item_once(n, world):
    shares = [embedding._batch_slice(n, BATCH, r, world) for r in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    for (a0, a1), (b0, b1) in itertools.pairwise(shares):
        assert a1 == b0 and a0 <= a1
    assert all(s % BATCH == 0 for s, _ in shares)


def test_shares_joined_equal_the_whole_run():
    """What three ranks embed and join is the one-process run, row for row."""
    train = _data()[0]
    whole = embed_dataset(train, Net(0), batch_size=BATCH, cache_dir=False, progress=False)
    job = embedding._prepare(train, Net(0), transform=None, device="cpu", batch_size=BATCH, bits=BITS, seed=0,
                             fit=None, image_fn=None, fingerprint=None, embed_fingerprint=None, cache_dir=False,
                             on_error="raise", progress=False, refresh=False)
    parts = [embedding._embed_range(job.source, job.runner, *embedding._batch_slice(N, BATCH, r, 3), BATCH, "raise",
                                    False) for r in range(3)]
    joined = embedding._joined(parts, N)
    np.testing.assert_array_equal(joined.emb, whole.embeddings)
    assert joined.valid.all() and joined.failures == []
