"""The stateful query detectors: Blacklight-style similarity and feature-space coverage, in
the guard and through the gateway."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import ConfigError, NotFittedError
from bastion.guard import GuardConfig, fit_guard
from bastion.guard.config import CoverageConfig, SimilarityConfig
from bastion.guard.coverage import CoverageMonitor
from bastion.guard.fingerprint import Fingerprinter, _mix, shared
from bastion.guard.guard import Guard
from bastion.guard.similarity import SimilarityMonitor
from bastion.guard.simulate import SplitTarget, client_alerts, kcenter_order
from bastion.guard.tap import ModelTap

MASK = (1 << 64) - 1


def _square_like(x: torch.Tensor, n: int, *, eps: float = 0.1, seed: int = 0) -> torch.Tensor:
    """``n`` queries of a Square-style random search around one image: start from
    ``x + eps·(random signs per column)``, then each query re-draws the signs of one 3×3
    window of the current perturbation (the queries of the attack, without the model)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    delta = eps * (2 * torch.randint(0, 2, (1, 1, w), generator=gen) - 1).float().expand(x.shape)
    delta = delta.clone()
    out = []
    for _ in range(n):
        out.append((x + delta).clamp(0, 1))
        r, c = (int(v) for v in torch.randint(0, h - 2, (2,), generator=gen))
        sign = float(2 * torch.randint(0, 2, (1,), generator=gen) - 1)
        delta[..., r : r + 3, c : c + 3] = eps * sign
    return torch.stack(out)


@pytest.fixture(scope="module")
def halves(digits):
    """Held-out benign rows to calibrate on, and other rows to replay (digits test split)."""
    perm = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(0))
    return digits.test.x[perm[:225]], digits.test.x[perm[225:]]


@pytest.fixture(scope="module")
def similarity(halves):
    return SimilarityMonitor(SimilarityConfig(salt=7)).fit(halves[0])


# -- fingerprints -------------------------------------------------------------------------


def _reference_hashes(x: np.ndarray, fp: Fingerprinter) -> list[int]:
    """Slow reference: Σ_j q[i+j]·B^j mod 2^64 per window, then the salted finaliser."""
    q = [int(v) + 1 for v in np.clip(np.floor(x * fp.levels), 0, fp.levels - 1)]
    base = (fp.salt * 2 + 1) & MASK | 1
    raw = [
        sum(q[i + j] * pow(base, j, 1 << 64) for j in range(fp.window)) & MASK
        for i in range(fp.n_windows)
    ]
    mixed = _mix(np.array(raw, dtype=np.uint64) ^ np.uint64(fp.salt))
    return [int(v) for v in mixed]


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(4, 40),
    window=st.integers(2, 8),
    levels=st.integers(2, 16),
    seed=st.integers(0, 1000),
)
def test_window_hashes_match_the_slow_reference(dim, window, levels, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((2, dim)).astype(np.float32)
    fp = Fingerprinter(dim, levels=levels, window=window, top_k=8, salt=seed * 31 + 5)
    fast = fp.window_hashes(x)
    assert fast.shape == (2, dim - min(window, dim) + 1)
    assert [int(v) for v in fast[0]] == _reference_hashes(x[0], fp)
    prints = fp(x)
    for row, p in zip(fast, prints, strict=True):
        assert list(p) == sorted(set(int(v) for v in row))[-8:]  # the top-k distinct


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.integers(0, 100))
def test_shared_counts_the_intersection(values, seed):
    fp = np.array(sorted(set(values)), dtype=np.uint64)
    rng = np.random.default_rng(seed)
    store = np.stack([rng.choice(60, 6, replace=False) for _ in range(5)]).astype(np.uint64)
    want = [len(set(fp.tolist()) & (set(row.tolist()) - {0})) for row in store]
    assert shared(fp, store).tolist() == want


def test_stop_list_drops_windows_common_to_benign_inputs(similarity, halves):
    flat = halves[1].flatten(1).numpy()
    stop = set(int(h) for h in similarity.stop_)
    assert stop and similarity.k_ == 32
    unfiltered = similarity._fingerprinter(np.zeros(0, dtype=np.uint64))(flat)
    filtered = similarity._fp(flat)
    assert any(stop & set(p.tolist()) for p in unfiltered)  # common windows would be kept
    assert not any(stop & set(p.tolist()) for p in filtered)


# -- the similarity detector ---------------------------------------------------------------


def test_threshold_is_calibrated_above_benign_matches(similarity):
    assert similarity.benign_max_ < similarity.threshold_ <= similarity.k_
    assert similarity.n_calibration_ == 225


def test_square_like_queries_alert_within_a_few_queries(similarity, halves):
    runs = [similarity.observe("square", _square_like(halves[1][i], 30, seed=i)) for i in (0, 1)]
    last = runs[-1][-1]
    assert last.alert and last.alert_at_query <= 5
    assert "near-duplicates of one input" in last.reason
    assert last.signal().extraction_alert and last.signal().reasons[0].startswith("client square")
    similarity.reset("square")
    assert not similarity.status("square").alert


def test_benign_replay_of_distinct_inputs_never_alerts(similarity, halves):
    replay = halves[1]
    for k in range(3):
        order = torch.randperm(len(replay), generator=torch.Generator().manual_seed(k))
        for i in range(0, len(order), 8):
            statuses = similarity.observe(f"benign-{k}", replay[order[i : i + 8]])
        assert not statuses[-1].alert, statuses[-1].reason
        # every client after the first sends the same images: exact repeats, not hits
        assert statuses[-1].repeats == (0 if k == 0 else len(replay))
        similarity.reset(f"benign-{k}")


def test_a_benign_client_is_not_blamed_for_an_attack_on_its_image(similarity, halves):
    x = halves[1][5]
    similarity.observe("attacker", _square_like(x, 40, eps=0.03, seed=3))
    assert similarity.status("attacker").alert
    # the clean image once, then other images: at most one hit on the attack's input
    after = similarity.observe("user", torch.cat([x[None], halves[1][6:30]]))
    assert not after[-1].alert and after[-1].anchor_hits <= 1
    similarity.reset("attacker")
    similarity.reset("user")


def test_an_attack_split_over_keys_is_attributed_to_every_key(similarity, halves):
    queries = _square_like(halves[1][9], 40, seed=9)
    for i in range(0, 40, 2):  # alternate keys, two queries each
        similarity.observe(f"key-{(i // 2) % 4}", queries[i : i + 2])
    statuses = [similarity.status(f"key-{k}") for k in range(4)]
    assert all(s.alert for s in statuses)
    assert any("matched queries of client(s) key-" in (s.reason or "") for s in statuses)
    for k in range(4):
        similarity.reset(f"key-{k}")


def test_state_is_bounded():
    cfg = SimilarityConfig(salt=1, global_store=50, client_store=8, max_clients=3)
    mon = SimilarityMonitor(cfg).fit(torch.rand(40, 64))
    for c in range(5):
        mon.observe(f"c{c}", torch.rand(30, 64))
    assert len(mon.clients()) == 3
    assert len(mon._global.index) <= 50 * mon.k_ and len(mon._global.by_digest) <= 50
    assert mon._clients.get("c4").rows.shape == (8, mon.k_)


def test_state_round_trip_and_errors(similarity, halves):
    restored = SimilarityMonitor.from_state(similarity.state())
    x = halves[1][:4]
    assert restored.threshold_ == similarity.threshold_
    flat = x.flatten(1).numpy()
    pairs = zip(restored._fp(flat), similarity._fp(flat), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    with pytest.raises(NotFittedError, match=r"SimilarityMonitor\.fit"):
        SimilarityMonitor().observe("c", x)
    with pytest.raises(ConfigError, match="needs >= 2 held-out inputs"):
        SimilarityMonitor().fit(x[:1])


# -- the coverage detector ----------------------------------------------------------------


@pytest.fixture(scope="module")
def coverage(guard_module, halves):
    tap = ModelTap(guard_module)
    out = tap(halves[0])
    mon = CoverageMonitor(CoverageConfig()).fit(out.features, out.predictions, num_classes=10)
    return mon, tap


def test_coverage_alerts_on_a_diversity_seeking_client_only(coverage, halves, digits):
    mon, tap = coverage
    pool = halves[1]
    order = kcenter_order(pool, 150)
    for i in range(0, 150, 10):
        out = tap(pool[order[i : i + 10]])
        statuses = mon.observe("kcenter", out.features, out.predictions)
    assert statuses[-1].alert and "coverage" in statuses[-1].reason
    # benign replays of other held-out rows and a near-duplicate stream stay below it
    for k in range(3):
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(k))
        for i in range(0, len(perm), 8):
            out = tap(pool[perm[i : i + 8]])
            statuses = mon.observe(f"benign-{k}", out.features, out.predictions)
        assert not statuses[-1].alert, statuses[-1].reason
    out = tap(_square_like(pool[0], 120))
    assert not mon.observe("square", out.features, out.predictions)[-1].alert


def test_coverage_state_round_trip(coverage, halves):
    mon, tap = coverage
    restored = CoverageMonitor.from_state(*mon.state())
    out = tap(halves[1][:5])
    assert np.array_equal(restored.project(out.features)[0], mon.project(out.features)[0])
    assert restored.limits(50) == mon.limits(50) and mon.limits(5) is None
    with pytest.raises(ConfigError, match=">= 20 held-out inputs"):
        CoverageMonitor().fit(out.features, out.predictions, num_classes=10)


# -- in the guard -------------------------------------------------------------------------


def test_guard_blocks_near_duplicates_and_names_the_detector(fitted_guard, digits, tmp_path):
    queries = _square_like(digits.test.x[3], 12, eps=0.03, seed=4)
    verdicts = [fitted_guard.inspect(queries[i : i + 1], "sq")[0] for i in range(12)]
    assert verdicts[-1].verdict == "block"
    assert any("similarity" in r for r in verdicts[-1].reasons)
    assert {"similarity.match", "similarity.hits", "coverage.cells"} <= set(verdicts[-1].scores)
    alerts = client_alerts(fitted_guard, "sq")
    assert alerts.similarity is not None and alerts.similarity <= 5
    fitted_guard.save(tmp_path)
    loaded = Guard.load(tmp_path, fitted_guard.tap.model)
    assert loaded.query.similarity.threshold_ == fitted_guard.query.similarity.threshold_
    assert loaded.query.coverage.horizon_ == fitted_guard.query.coverage.horizon_
    fitted_guard.reset_client("sq")
    assert not fitted_guard.query_status("sq").similarity.alert


def test_split_target_deals_batches_over_keys():
    seen: list[int] = []

    def make(i: int):
        from bastion.attacks.targets import CallableTarget

        def answer(x: torch.Tensor) -> torch.Tensor:
            seen.append(i)
            return torch.full((x.shape[0], 2), 0.5)

        return CallableTarget(answer, kind="scores", num_classes=2)

    split = SplitTarget([make(0), make(1)], batch_size=3)
    split(torch.rand(7, 4))
    assert seen == [0, 1, 0] and split.log == [(3, 0), (6, 1), (7, 0)]


# -- through the gateway ------------------------------------------------------------------


@pytest.fixture()
def guarded_gateway(digits, digits_model_dir, tmp_path):
    """The digits model with a guard whose only stateful detectors are the query ones."""
    from bastion.serve.app import create_app
    from bastion.serve.settings import ServeSettings
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    model_dir = tmp_path / "model"
    shutil.copytree(digits_model_dir, model_dir)
    cfg = GuardConfig.model_validate(
        {
            "detectors": {"reconstruction": {"epochs": 3}},
            "extraction": {"enabled": False},
            "query": {"similarity": {"salt": 3}},
        }
    )
    perm = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(1))
    guard = fit_guard(
        _module(model_dir),
        digits.train,
        config=cfg,
        calibration=digits.test.subset(perm[:200]),
    )
    guard.save(model_dir)
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    engine = make_engine(db)
    roles = (("attacker", "client"), ("user", "client"), ("admin", "admin"))
    keys = {name: create_key(engine, role, name) for name, role in roles}
    engine.dispose()
    settings_ = ServeSettings(
        model_dir=model_dir,
        db_url=db,
        guard={"enabled": True, "required": True},
        rate_limit={"enabled": False},
        auth={"cache_ttl_s": 0.0},
        reviews={"check_every_s": 3600},
    )
    with TestClient(create_app(settings_)) as client:
        yield client, keys, digits.test.x[perm[200:]]


def _module(model_dir):
    from bastion.models.io import load_model

    return load_model(model_dir).module


def test_gateway_blocks_a_square_like_client_and_not_a_benign_replay(guarded_gateway):
    client, keys, replay = guarded_gateway

    def post(name: str, x: torch.Tensor):
        auth = {"Authorization": f"Bearer {keys[name][1]}"}
        return client.post("/v1/predict", json={"inputs": x.tolist()}, headers=auth)

    codes = [post("user", replay[i : i + 5]).status_code for i in range(0, 100, 5)]
    assert 403 not in codes and set(codes) <= {200, 202}
    queries = _square_like(replay[0], 10, eps=0.03, seed=5)
    codes = [post("attacker", queries[i : i + 1]).status_code for i in range(10)]
    assert 403 in codes and codes.index(403) <= 4
    admin = {"Authorization": f"Bearer {keys['admin'][1]}"}
    block = client.get(f"/v1/clients/{keys['attacker'][0].id}/block", headers=admin).json()
    assert block["created_by"] == "guard"
    assert any("similarity" in r for r in block["reasons"])
    assert post("user", replay[100:105]).status_code in (200, 202)
