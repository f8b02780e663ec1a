"""Coverage-guided fuzzing of the image decoding path with atheris (not collected by pytest).

Every input is written to a file and hashed; anything but a result or an
``ImageDecodeError`` is a finding. Run by hand (needs ``pip install atheris``)::

    python tests/fuzz/fuzz_decode.py -atheris_runs=200000 -max_len=65536 [corpus_dir]

Seed the corpus with tests/badimages.py (``python tests/fuzz/fuzz_decode.py --write-seeds DIR``).
The file name does not start with ``test_``, so pytest never collects it.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _write_seeds(folder: str) -> None:
    from badimages import write_corpus

    write_corpus(folder)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        _write_seeds(sys.argv[2])
        return
    import atheris

    with atheris.instrument_imports():
        from torch_dedup.errors import ImageDecodeError
        from torch_dedup.hashing.api import hash_images

    path = os.path.join(tempfile.mkdtemp(prefix="td-fuzz-"), "input")

    def one(data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
        try:
            res = hash_images([path], "phash", on_error="raise", workers=0)
        except ImageDecodeError:
            return
        assert res.valid.all()

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
