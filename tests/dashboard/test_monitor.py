"""The monitor page's detector score distributions against thresholds, drift over time and
per-key extraction / query-attack alerts (a real fitted guard behind the in-process
gateway), and the overview's attestation status per model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import pytest
import torch

from bastion.dashboard.attestations import ATTESTATION_FILE, AttestationChecker
from bastion.gate.attest import (
    PREDICATE_TYPE,
    REPORT_SUBJECT,
    STATEMENT_TYPE,
    sign_statement,
    write_envelope,
)
from bastion.gate.keys import generate_signing_key, load_public_key, load_signing_key
from bastion.guard import fit_guard
from bastion.guard.verdict import DriftStatus
from bastion.serve.history import MonitorHistory
from tests.dashboard.conftest import login
from tests.dashboard.runs import run_folder
from tests.guard.conftest import fast_config


def test_distributions_bin_every_score_and_count_those_above_the_threshold():
    h = MonitorHistory(score_capacity=5)
    for v in (0.1, 0.2, 0.3, 0.9, 1.5, 2.0, float("nan")):
        h.record([{"recon": v, "extraction.volume": 7.0}], ["recon"])
    (d,) = h.distributions({"recon": 1.0}, bins=4)
    assert d.n == 5  # the ring keeps the latest five finite scores
    assert list(h.scores["recon"]) == [0.2, 0.3, 0.9, 1.5, 2.0]
    assert sum(b.count for b in d.bins) == 5 and d.above == 2  # 1.5 and 2.0
    assert d.lo == 0.2 and d.hi == 2.0 and "extraction.volume" not in h.scores
    assert all(b.above == (b.lo >= 1.0) for b in d.bins)
    # a threshold beyond every score still shows on the axis, with room past it
    (far,) = h.distributions({"recon": 5.0}, bins=4)
    assert far.lo <= 5.0 < far.hi and far.above == 0 and far.beyond == 0


def test_an_outlier_does_not_squeeze_the_histogram():
    h = MonitorHistory()
    h.record([{"s": 0.01 * i} for i in range(200)] + [{"s": 1000.0}], ["s"])
    (d,) = h.distributions({"s": 1.5}, bins=10)
    assert d.hi < 3 and d.beyond == 10 and d.bins[-1].count >= 10  # the top 5 % in the last bar
    assert sum(b.count for b in d.bins) == 201
    assert max(b.count for b in d.bins[:-1]) < 100  # the 200 ordinary scores spread out


def test_drift_sampler_samples_only_while_requests_arrive():
    h = MonitorHistory(drift_every_s=0.05)
    calls = []

    def status():
        calls.append(1)
        return DriftStatus(p_value=0.001, alert=True, window_size=9, window_capacity=9, alpha=0.01)

    async def run():
        task = asyncio.create_task(h.run_drift_sampler(status))
        await asyncio.sleep(0.2)
        assert not calls  # no decision yet: nothing sampled
        h.record([{"a": 1.0}], ["a"])
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    assert len(calls) == 1 and len(h.drift) == 1  # one decision: one sample, not one per tick
    assert h.drift[0].alert and h.drift[0].strength == pytest.approx(3.0)


@pytest.fixture()
def guarded(gw, digits):
    """The gateway's model behind a real guard fitted on digits (fast settings)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        guard = fit_guard(gw.state.runtime.module, digits.train, config=fast_config())
    finally:
        torch.set_num_threads(threads)
    gw.state.runtime.guard = guard
    return guard


def test_monitor_shows_scores_drift_and_the_keys_watched(gw, guarded, digits):
    xs = digits.test.x[:12]
    for i in range(12):
        r = gw.client.post("/v1/predict", json={"inputs": [xs[i].tolist()]}, headers=gw.auth())
        assert r.status_code in (200, 202, 403), r.text
    repeat = xs[0].tolist()
    for _ in range(3):
        gw.client.post("/v1/predict", json={"inputs": [repeat]}, headers=gw.auth("client2"))
    gw.state.history.add_drift(guarded.drift_status())
    login(gw, "reviewer")
    page = gw.client.get("/monitor")
    assert page.status_code == 200
    html = page.text
    shown = set(re.findall(r'<figure class="dist" data-detector="([^"]+)"', html))
    assert shown and shown <= set(guarded.detectors)
    history = gw.state.history
    for name in shown:
        fig = html.split(f'data-detector="{name}"')[1].split("</figure>")[0]
        n = len(history.scores[name])
        assert f"{n} score(s)" in fig and 'class="threshold"' in fig
        assert f"threshold {guarded.thresholds[name]:.4g}" in fig
    assert 'id="drift-history"' in html and "1 sample(s)" in html
    watch = html.split('id="watch"')[1].split("</table>")[0]
    assert "test client" in watch and "second client" in watch
    row = watch.split('data-key="{}"'.format(gw.ids["client"]))[1].split("</tr>")[0]
    assert "<td>client</td><td>12</td>" in row, row  # role and query count
    row2 = watch.split('data-key="{}"'.format(gw.ids["client2"]))[1].split("</tr>")[0]
    assert "<td>client</td><td>3</td>" in row2, row2
    live = gw.client.get("/monitor/live").text
    assert "<html" not in live and 'id="distributions"' in live and 'id="watch"' in live


def test_monitor_without_a_guard_says_so(gw):
    login(gw, "reviewer")
    html = gw.client.get("/monitor").text
    assert 'id="no-distributions">no guard' in html and 'id="no-watch">no guard' in html


# ---------------------------------------------------------------- attestation status


def attestation_statement(folder) -> dict:
    """A release-gate statement over the run folder's report alone (gate passed)."""
    digest = hashlib.sha256((folder / "report.json").read_bytes()).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": REPORT_SUBJECT, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"files": {REPORT_SUBJECT: "report.json"}, "gate": {"passed": True}},
    }


def _attest(folder, key):
    write_envelope(sign_statement(attestation_statement(folder), key), folder / ATTESTATION_FILE)


def test_attestation_states(tmp_path):
    files = generate_signing_key(tmp_path / "k" / "signing.key")
    other = generate_signing_key(tmp_path / "o" / "signing.key")
    key = load_signing_key(files.private)
    folder = run_folder(tmp_path / "runs")
    trusted = AttestationChecker(load_public_key(files.public))
    assert trusted.status(folder).state == "unsigned"
    _attest(folder, key)
    assert AttestationChecker(None).status(folder).state == "signed"  # no key: no claim
    ok = trusted.status(folder)
    assert ok.state == "verified" and ok.gate_passed is True
    assert AttestationChecker(load_public_key(other.public)).status(folder).state == "invalid"
    (folder / "report.json").write_text((folder / "report.json").read_text() + " ")
    again = AttestationChecker(load_public_key(files.public)).status(folder)
    assert again.state == "stale" and "report" in again.detail
    (folder / ATTESTATION_FILE).write_text("{not json")
    assert trusted.status(folder).state == "invalid"  # the file changed: checked afresh


def test_overview_shows_each_models_attestation(tmp_path, settings, gateway_factory):
    files = generate_signing_key(tmp_path / "k" / "signing.key")
    runs = tmp_path / "runs"
    _attest(run_folder(runs, "signed-run"), load_signing_key(files.private))
    run_folder(runs, "plain-run").joinpath("report.json").write_text(
        json.dumps(
            {
                **json.loads((runs / "signed-run" / "report.json").read_text()),
                "model": {
                    **json.loads((runs / "signed-run" / "report.json").read_text())["model"],
                    "name": "plain",
                },
            }
        )
    )
    s = settings.model_copy(
        update={
            "dashboard": settings.dashboard.model_copy(update={"attestation_key": files.public})
        }
    )
    with gateway_factory(s) as g:
        g.state.dashboard_runs_dir = runs
        login(g, "reviewer")
        table = g.client.get("/").text.split('id="latest-scores"')[1].split("</table>")[0]
    rows = {
        m: r for r in table.split("<tr>")[2:] for m in ("other", "plain") if f"<td>{m}</td>" in r
    }
    assert 'data-state="verified"' in rows["other"] and 'data-state="unsigned"' in rows["plain"]
