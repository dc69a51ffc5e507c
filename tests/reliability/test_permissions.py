"""Issue 18, case 8: artifacts get the usual permissions (``0666 & ~umask``), safetensors files
included (the temporary file is 0600, and safetensors replaces it, so the mode is set last)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from genrec.artifacts import write_json
from genrec.collaborative import encode_interactions
from genrec.data import SequenceDataModule
from genrec.data.synthetic import SyntheticSource
from genrec.quantize import SemanticIDs


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_artifacts_get_the_usual_permissions(tmp_path, umask):
    expected = 0o666 & ~umask
    sids = SemanticIDs.from_codes(torch.randint(0, 4, (10, 2), generator=torch.Generator().manual_seed(0)), 4, fingerprint="fp")
    sids.save(tmp_path / "sids.safetensors")
    data = SequenceDataModule(SyntheticSource(num_users=20, num_items=30, num_categories=2, num_brands=4, max_length=6), kcore=0).data
    encode_interactions(data, tmp_path / "cf.safetensors", dim=4)
    write_json(tmp_path / "result.json", {"a": 1})
    modes = {name: oct(_mode(tmp_path / name)) for name in ("sids.safetensors", "sids.json", "cf.safetensors", "result.json")}
    assert modes == dict.fromkeys(modes, oct(expected))
