"""`bastion scan` over the generated corpus (tests/scan/corpus.py): every code-executing file
is found at severity high or above, and the files users really have give no finding.

The fast test scans the hand-assembled pickles (every technique of corpus_payloads) and the
numeric NumPy files; the slow test builds the whole corpus, proves every payload fires under
its naive loader, then scans it all.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bastion.scan.engine import scan_file
from bastion.scan.findings import FileResult, Severity
from tests.scan.corpus import CorpusItem, build_corpus, fires
from tests.scan.corpus_payloads import pickle_payloads

SKLEARN_PROFILES = ("sklearn", "joblib")


def _describe(r: FileResult) -> str:
    return "; ".join(f"{f.rule}:{f.severity.value}:{f.symbol}" for f in r.findings) or (
        r.error or "no finding"
    )


def _flagged(r: FileResult) -> bool:
    return r.worst is not None and r.worst.rank >= Severity.high.rank


def test_every_pickle_technique_is_flagged_and_numeric_numpy_is_clean(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    missed = []
    payloads = pickle_payloads(str(marker))
    assert len({p.technique for p in payloads}) >= 40
    assert {p.proto for p in payloads} == {0, 1, 2, 3, 4, 5}
    for p in payloads:
        path = tmp_path / f"{p.technique}.p{p.proto}.pkl"
        path.write_bytes(p.data)
        r = scan_file(path)
        if not _flagged(r):
            missed.append(f"{p.technique}: {_describe(r)}")
    assert not missed, "missed: " + " | ".join(missed)
    assert not marker.exists()  # the scan never unpickles

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 4)).astype(np.float32))
    np.savez_compressed(tmp_path / "xy.npz", x=np.arange(6), y=rng.normal(size=3))
    for name in ("x.npy", "xy.npz"):
        r = scan_file(tmp_path / name)
        assert r.findings == [], f"{name}: {_describe(r)}"


def test_a_payload_inside_a_zip_in_a_zip_is_flagged(tmp_path: Path) -> None:
    payload = pickle_payloads(str(tmp_path / "MARKER"))[0].data
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("model.pkl", payload)
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("nested/inner.zip", inner.getvalue())
    r = scan_file(outer)
    assert _flagged(r), _describe(r)
    assert any("!" in f.location for f in r.findings)  # the member path is named


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusItem]:
    root = tmp_path_factory.mktemp("corpus")
    return build_corpus(root / "files", root / "MARKER", verify=True)


@pytest.mark.slow
def test_the_corpus_is_large_enough_and_every_payload_fired(corpus: list[CorpusItem]) -> None:
    malicious = [i for i in corpus if i.malicious]
    assert len({i.technique for i in malicious}) >= 40
    assert len([i for i in corpus if not i.malicious and i.kind != "suspicious"]) >= 25
    assert all(i.verified in {"fired", "by-construction"} for i in malicious)
    fired = next(i for i in malicious if i.verified == "fired")
    # the check can fail: a benign file given the same loader does not create the marker
    benign = next(i for i in corpus if i.kind == "sklearn" and i.loader == "pickle.load")
    marker = fired.path.parents[1].parent / "MARKER"
    assert fires(fired, marker)
    assert not fires(CorpusItem(**{**benign.__dict__, "malicious": True}), marker)


@pytest.mark.slow
def test_every_malicious_corpus_file_is_flagged(corpus: list[CorpusItem]) -> None:
    missed = []
    for item in corpus:
        if item.malicious or item.kind == "suspicious":
            r = scan_file(item.path)
            if not _flagged(r):
                missed.append(f"{item.technique} ({item.path.name}): {_describe(r)}")
    assert not missed, "missed: " + " | ".join(missed)


@pytest.mark.slow
def test_tensors_state_dicts_safetensors_and_numpy_give_no_finding(
    corpus: list[CorpusItem],
) -> None:
    noisy = []
    for item in corpus:
        if item.kind == "tensors":
            r = scan_file(item.path)
            if r.findings or r.error:
                noisy.append(f"{item.technique}: {_describe(r)}")
    assert not noisy, "false positives: " + " | ".join(noisy)


@pytest.mark.slow
def test_sklearn_files_are_clean_with_their_profiles_and_flagged_without(
    corpus: list[CorpusItem],
) -> None:
    noisy, silent = [], []
    for item in corpus:
        if item.kind != "sklearn":
            continue
        r = scan_file(item.path, profiles=SKLEARN_PROFILES)
        if r.findings or r.error:
            noisy.append(f"{item.technique}: {_describe(r)}")
        if not scan_file(item.path).findings:  # core alone does not allow sklearn classes
            silent.append(item.technique)
    assert not noisy, "false positives with the sklearn profiles: " + " | ".join(noisy)
    assert not silent, "allowed without the sklearn profile: " + ", ".join(silent)
    rider = next(i for i in corpus if i.technique == "joblib:sklearn-model-plus-payload")
    assert _flagged(scan_file(rider.path, profiles=SKLEARN_PROFILES))
