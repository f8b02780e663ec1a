"""``torch-dedup wds``: every left-out shard named on stderr and in the summary, messages in the
words of the command line, ``-q`` quiet, ``pipe:`` and remote failures named by shard."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest

from torch_dedup.cli import main
from torch_dedup.cli._wds import cli_words
from torch_dedup.wds import ShardReadError, hash_shards, plan_shards
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture
def shards(tmp_path):
    return make_demo_shards(tmp_path / "s", n_shards=3, per_shard=8, seed=2)


def test_a_missing_shard_is_named_on_stderr_and_in_the_plan_summary(shards, tmp_path, capsys):
    missing = str(tmp_path / "s" / "shard-000099.tar")
    for extra in ([], ["--json"], ["-q"]):
        rc = main(["wds", "plan", *shards, missing, "--on-error", "skip", "--out", str(tmp_path / "p.tdplan"),
                   "--workers", "0", "--no-progress", *extra])
        cap = capsys.readouterr()
        assert rc == 0 and missing in cap.err, extra
        assert "--on-error skip" not in cap.err and "on_error" not in cap.err  # skip was given: no advice to
    rc = main(["wds", "plan", *shards, missing, "--on-error", "skip", "--out", str(tmp_path / "p.tdplan"),
               "--workers", "0", "--no-progress"])
    cap = capsys.readouterr()
    assert "(1 more left out)" in cap.out and missing in cap.out
    assert main(["wds", "hash", *shards, missing, "--on-error", "skip", "--workers", "0", "--no-progress"]) == 0
    assert missing in capsys.readouterr().err
    plan = plan_shards([*shards, missing], 6, workers=0, progress=False, on_error="skip")
    assert [u for u, _ in plan.summary["shard_errors"]] == [missing]


def test_missing_shard_message_fits_a_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.tar")
    rc = main(["wds", "hash", missing, "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and missing in err and "--on-error skip" in err and "on_error=" not in err
    assert "before the damage" not in err and "Traceback" not in err


def test_cli_messages_name_flags_not_keywords(shards, tmp_path, capsys):
    assert main(["wds", "plan", *shards, "--out", str(tmp_path / "p.tdplan"), "--workers", "0", "-q"]) == 0
    out = tmp_path / "o"
    assert main(["wds", "rewrite", "--plan", str(tmp_path / "p.tdplan"), "--out", str(out), "-q"]) == 0
    assert main(["wds", "rewrite", "--plan", str(tmp_path / "p.tdplan"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err


def test_quiet_draws_no_progress_bars(shards, capsys):
    assert main(["wds", "hash", *shards, "--workers", "0", "-q", "--refresh"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "hashing shards" not in cap.err and "%|" not in cap.err


def test_progress_bar_is_drawn_without_quiet(shards, capsys):
    # the control for the -q test: the same call draws a bar
    assert main(["wds", "hash", *shards, "--workers", "0", "--refresh"]) == 0
    assert "hashing shards" in capsys.readouterr().err


def test_pipe_failure_names_the_shard_and_the_command(tmp_path):
    url = f"pipe:cat {tmp_path}/absent.tar"
    with pytest.raises(ShardReadError) as err:
        hash_shards([url], workers=0, progress=False)
    text = str(err.value)
    assert text.startswith(f"shard {url}") and "exited with status 1" in text and "'shell'" not in text
    h = hash_shards([url, "pipe:false"], workers=0, progress=False, on_error="skip")
    assert [u for u, _ in h.errors] == [url, "pipe:false"]


def test_unreachable_http_shard_fails_fast_and_names_it():
    url = "http://127.0.0.1:9/shard-000000.tar"  # nothing listens on the discard port
    with pytest.raises(ShardReadError) as err:
        hash_shards([url], workers=0, progress=False)
    assert url in str(err.value) and "curl exited with status 7" in str(err.value)


def test_sidecars_get_the_shards_file_mode(shards):
    sc = hash_shards(shards, workers=0, progress=False).sidecars[0]
    assert stat.S_IMODE(os.stat(sc.path).st_mode) == stat.S_IMODE(os.stat(shards[0]).st_mode)


def test_cli_words():
    raise_args, skip_args = argparse.Namespace(on_error="raise"), argparse.Namespace(on_error="skip")
    text = "shard x: cut. Replace or re-create the shard, or pass on_error='skip' to record it and go on."
    assert cli_words(text, raise_args).endswith("or pass --on-error skip to record it and go on.")
    assert cli_words(text, skip_args) == "shard x: cut. Replace or re-create the shard."
    assert cli_words("choose an empty folder or pass overwrite=True", raise_args).endswith("pass --overwrite")


def test_plan_error_is_importable_from_wds():
    from torch_dedup.errors import PlanError
    from torch_dedup.wds import PlanError as WdsPlanError

    assert WdsPlanError is PlanError


def test_workers_help_says_what_the_default_does(capsys):
    with pytest.raises(SystemExit):
        main(["wds", "hash", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "below 256 MB of local shards" in text and "default: all cores" not in text


def test_json_summary_lists_left_out_shards(shards, tmp_path, capsys):
    missing = str(tmp_path / "gone.tar")
    main(["wds", "plan", shards[0], missing, "--on-error", "skip", "--out", str(tmp_path / "p.tdplan"),
          "--workers", "0", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert [e[0] for e in summary["shard_errors"]] == [missing]
