"""`lstmpipe demo --domain`: each domain's sample is a labelled archive plus an incoming batch the
readers discover as that domain's kind (the whole chain on them runs in `lstmpipe demo`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.demo import DOMAINS, demo, generate_sample
from lib.errors import ConfigError
from lib.sources import discover


@pytest.mark.parametrize("domain, kind", [("medical", "dicom"), ("remote-sensing", "geotiff")])
def test_domain_samples_are_labelled_series_of_their_kind(tmp_path: Path, domain: str, kind: str) -> None:
    sample = generate_sample.fn(str(tmp_path), seed=0, clips_per_class=4, domain=domain)
    archive = discover(Path(sample["archive"]), Path(sample["labels"]))
    assert not archive.failures and len(archive.refs) == 8
    assert {r.kind for r in archive.refs} == {kind} and len({r.label for r in archive.refs}) == 2
    incoming = discover(Path(sample["incoming"]))
    assert incoming.refs and {r.kind for r in incoming.refs} == {kind}
    assert not {r.content_hash for r in incoming.refs} & {r.content_hash for r in archive.refs}  # other series
    model, overrides = DOMAINS[domain]
    assert model == f"demo-{domain}" and overrides["sampling.fps"] is None  # every frame / date is kept


def test_an_unknown_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="satellite"):
        demo.fn(domain="satellite")
