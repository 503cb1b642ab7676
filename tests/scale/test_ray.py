"""Assessments and sweeps on a real local Ray (2 CPUs, started once for the module): one
task per probe shard (the evasion probe's (attack, ε) jobs, curve and sanity checks), the
merged report equals the local run's for the same seed, a killed run resumes without
resubmitting finished probes or shards, and a sweep gives the same summary on Ray as
locally."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from bastion.assess.api import assessment_context
from bastion.assess.executor import LocalExecutor, RayExecutor, TaskRef
from bastion.assess.runner import PARTIAL, plan_assessment, run_assessment
from bastion.assess.schema import Budgets, Report, ThreatModel
from bastion.errors import BastionError, ConfigError
from bastion.models.io import load_model
from bastion.scale.sweep import SweepConfig, SweepSummary, load_sweep, run_sweep
from tests.cli_runner import run_main
from tests.scale.conftest import QUERIES, WHITE_BOX

ray = pytest.importorskip("ray")

# every probe, each cheap: poisoning retrains a one-epoch MLP three times, membership runs
# the loss attack and RMIA with one reference model (LiRA is skipped: one shadow model)
EVERY_PROBE = ThreatModel(
    eps=[0.1],
    attacks=["fgsm", "pgd"],
    curve_attack="pgd",
    curve_eps=[0.05, 0.1],
    can_poison=True,
    poison_rate=0.1,
    budgets=Budgets(
        n_eval=40,
        pgd_steps=5,
        queries=30,
        n_blackbox=8,
        extraction_queries=[40],
        shadow_models=1,
        reference_models=1,
    ),
)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


def comparable(report: Report, *, resumed: bool = True) -> dict:
    """The report without its timings (``seconds`` fields, and durations quoted in notes
    such as RMIA's "0.1 s to train"), and without ``resumed`` when asked."""
    drop = {"created", "seconds"} | (set() if resumed else {"resumed"})
    data = json.loads(report.model_dump_json(exclude=drop))
    for f in data["findings"]:
        f.pop("seconds")
        f["notes"] = [re.sub(r"\b\d+(\.\d+)? s\b", "T s", n) for n in f["notes"]]
    return data


def context(model_dir: Path, threat: ThreatModel, out: Path):
    return assessment_context(
        load_model(model_dir), "digits", threat, out, seed=3, members="train-split"
    )


# the white-box threat models' evasion shards: its two (attack, ε) jobs, curve, sanity
EVASION_SHARDS = ["fgsm@0.1", "pgd@0.1", "curve", "sanity-checks"]


def tasks(executor: RayExecutor) -> list[tuple[str, str]]:
    """(probe, shard) of every task the executor sent, in order."""
    return [(t.probe, t.shard) for t in executor.submitted]


def test_ray_report_equals_local(digits_mlp, tmp_path):
    local = run_assessment(context(digits_mlp, EVERY_PROBE, tmp_path / "local"))
    executor = RayExecutor()
    remote = run_assessment(context(digits_mlp, EVERY_PROBE, tmp_path / "ray"), executor)
    assert tasks(executor) == [
        *(("evasion", s) for s in EVASION_SHARDS),
        ("blackbox", "all"),
        ("extraction", "all"),
        ("poisoning", "all"),
        # one shadow model: LiRA trains none, its shard only records the skip
        *(("membership", s) for s in ("loss-threshold", "lira", "rmia")),
    ]
    assert {f.probe for f in local.findings} == {
        "evasion",
        "blackbox",
        "extraction",
        "poisoning",
        "membership",
    }
    assert any(s.probe == "membership/lira" for s in local.skipped)  # a probe's own skip
    assert comparable(remote) == comparable(local)
    # the files probes wrote on the workers came back under the ray run's folder
    for f in remote.findings:
        for rel in f.artifacts.values():
            assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()


def test_killed_run_resumes_without_resubmitting_finished_probes(digits_mlp, tmp_path):
    """A checkpoint cut after the evasion probe's record (as a kill leaves it): the resumed
    Ray run submits only the other probes, the black-box probe's sanity check reads the
    masks the evasion record kept, and the report equals the uninterrupted run's."""
    threat = WHITE_BOX
    full = run_assessment(context(digits_mlp, threat, tmp_path / "full"))  # keeps its checkpoint
    lines = (tmp_path / "full" / PARTIAL).read_text().splitlines()
    cut = next(
        i
        for i, line in enumerate(lines)
        if json.loads(line).get("kind") == "probe"
        and json.loads(line)["data"]["probe"] == "evasion"
    )
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / PARTIAL).write_text("\n".join(lines[: cut + 1]) + "\n")
    n_evasion = sum(f.probe == "evasion" for f in full.findings)
    executor = RayExecutor()
    resumed = run_assessment(context(digits_mlp, threat, tmp_path / "killed"), executor)
    assert tasks(executor) == [("blackbox", "all")]
    assert resumed.resumed == n_evasion > 0
    assert comparable(resumed, resumed=False) == comparable(full, resumed=False)
    again = RayExecutor()  # everything is checkpointed now: nothing is submitted
    run_assessment(context(digits_mlp, threat, tmp_path / "killed"), again)
    assert again.submitted == []


def cut_after(src: Path, dest: Path, keep: int) -> list[str]:
    """Copy ``src``'s checkpoint to ``dest`` up to and including its ``keep``-th evasion
    shard record (as a kill leaves it); returns the ids of the shards kept."""
    lines = src.read_text().splitlines()
    kept, end = [], 0
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("kind") == "shard" and rec["data"]["probe"] == "evasion":
            kept.append(rec["data"]["shard"])
            end = i + 1
            if len(kept) == keep:
                break
    dest.mkdir()
    (dest / PARTIAL).write_text("\n".join(lines[:end]) + "\n")
    return kept


def test_a_run_killed_between_shards_resubmits_only_the_missing_ones(digits_mlp, tmp_path):
    """A local run cut after its first two evasion shards (fgsm, then pgd, the strongest:
    its mask must come back from the shard record for the sanity checks and the black-box
    probe): the resumed Ray run submits only the curve, the sanity checks and the black-box
    probe, and its report equals the uninterrupted local run's. The same checkpoint with the
    two shards in the other order (as Ray leaves them when pgd finishes first) resumed
    locally gives the same report too: findings keep the shards' order."""
    threat = WHITE_BOX
    full = run_assessment(context(digits_mlp, threat, tmp_path / "full"))
    kept = cut_after(tmp_path / "full" / PARTIAL, tmp_path / "killed", 2)
    assert kept == ["fgsm@0.1", "pgd@0.1"]
    lines = (tmp_path / "killed" / PARTIAL).read_text().splitlines()
    executor = RayExecutor()
    resumed = run_assessment(context(digits_mlp, threat, tmp_path / "killed"), executor)
    assert tasks(executor) == [
        ("evasion", "curve"),
        ("evasion", "sanity-checks"),
        ("blackbox", "all"),
    ]
    assert resumed.resumed == 2
    sanity = next(f for f in resumed.findings if f.attack == "sanity-checks")
    assert "attack_accuracy" in sanity.metrics  # it read pgd's mask from the shard record
    assert comparable(resumed, resumed=False) == comparable(full, resumed=False)

    # pgd's shard recorded before fgsm's, as a Ray run whose pgd task finished first leaves it
    assert [json.loads(x)["kind"] for x in lines[1:]] == ["finding", "shard"] * 2
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / PARTIAL).write_text("\n".join([lines[0], *lines[3:5], *lines[1:3]]) + "\n")
    again = run_assessment(context(digits_mlp, threat, swapped))  # locally this time
    assert [f.attack for f in again.findings][:2] == ["fgsm", "pgd"]
    assert comparable(again, resumed=False) == comparable(full, resumed=False)


LIRA = ThreatModel(
    probes=["membership"],
    budgets=Budgets(n_eval=40, shadow_models=2, reference_models=1),
)
MEMBERSHIP_SHARDS = ["loss-threshold", "lira-shadow-0", "lira-shadow-1", "lira", "rmia"]


def test_lira_shadows_are_tasks_and_resume_one_by_one(digits_mlp, tmp_path):
    """Membership with two LiRA shadows (one epoch each): one task per shadow, LiRA's
    scoring after both, the report equal to the local run's; a run cut after the first
    shadow's record resubmits only the second shadow, the scoring and RMIA."""
    local = run_assessment(context(digits_mlp, LIRA, tmp_path / "local"))
    assert {f.attack for f in local.findings} >= {"lira-online", "lira-offline"}
    executor = RayExecutor()
    remote = run_assessment(context(digits_mlp, LIRA, tmp_path / "ray"), executor)
    assert tasks(executor) == [("membership", s) for s in MEMBERSHIP_SHARDS]
    assert comparable(remote) == comparable(local)
    lines = (tmp_path / "local" / PARTIAL).read_text().splitlines()
    cut = next(
        i
        for i, line in enumerate(lines)
        if json.loads(line).get("kind") == "shard"
        and json.loads(line)["data"]["shard"] == "lira-shadow-0"
    )
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / PARTIAL).write_text("\n".join(lines[: cut + 1]) + "\n")
    again = RayExecutor()
    resumed = run_assessment(context(digits_mlp, LIRA, tmp_path / "killed"), again)
    assert tasks(again) == [("membership", s) for s in ("lira-shadow-1", "lira", "rmia")]
    assert resumed.resumed == 1  # the loss threshold's finding
    assert comparable(resumed, resumed=False) == comparable(local, resumed=False)


def sweep_config(digits_mlp: Path, iris_mlp: Path) -> SweepConfig:
    return SweepConfig.model_validate(
        {
            "seed": 1,
            "models": [{"name": "digits", "path": str(digits_mlp)}, {"path": str(iris_mlp)}],
            "threat_models": [
                {"name": "white-box", "threat": WHITE_BOX.model_dump()},
                {"name": "queries", "threat": QUERIES.model_dump()},
            ],
        }
    )


def comparable_summary(summary: SweepSummary) -> list[dict]:
    return [r.model_dump(exclude={"seconds"}) for r in summary.rows]


def test_sweep_on_ray_equals_local_and_resumes(digits_mlp, iris_mlp, tmp_path):
    cfg = sweep_config(digits_mlp, iris_mlp)
    local = run_sweep(cfg, tmp_path / "local", LocalExecutor())
    executor = RayExecutor()
    remote = run_sweep(cfg, tmp_path / "ray", executor)
    names = ["digits__white-box", "digits__queries", "model__white-box", "model__queries"]
    assert [r.pair for r in local.rows] == names
    assert comparable_summary(remote) == comparable_summary(local)
    assert {r.status for r in remote.rows} == {"assessed"}
    assert len(executor.submitted) == 14  # 2 × (4 evasion shards + blackbox) + 2 × 2 probes
    for name in names:
        a = Report.model_validate_json((tmp_path / "local" / name / "report.json").read_text())
        b = Report.model_validate_json((tmp_path / "ray" / name / "report.json").read_text())
        assert comparable(a) == comparable(b)
        assert (tmp_path / "ray" / name / "report.html").exists()
    written = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert comparable_summary(SweepSummary.model_validate(written)) == comparable_summary(local)
    assert "| digits__white-box | assessed |" in (tmp_path / "ray" / "summary.md").read_text()
    # resume: two pairs lost their reports (the other two are read back, not rerun)
    shutil.rmtree(tmp_path / "ray" / "model__queries")
    partial = (tmp_path / "ray" / "digits__white-box" / "report.json").read_text()
    (tmp_path / "ray" / "digits__white-box" / "report.json").unlink()
    again = RayExecutor()
    resumed = run_sweep(cfg, tmp_path / "ray", again)
    queries, white_box = (
        str(tmp_path / "ray" / "model__queries"),
        str(tmp_path / "ray" / "digits__white-box"),
    )
    assert sorted(again.submitted) == sorted(
        [
            TaskRef(queries, "blackbox", "all"),
            TaskRef(queries, "extraction", "all"),
            *(TaskRef(white_box, "evasion", s) for s in EVASION_SHARDS),
            TaskRef(white_box, "blackbox", "all"),
        ]
    )
    status = {r.pair: r.status for r in resumed.rows}
    assert status == {
        "digits__white-box": "assessed",
        "digits__queries": "existing",
        "model__white-box": "existing",
        "model__queries": "assessed",
    }
    assert comparable_summary(resumed) == [
        {**r, "status": status[r["pair"]]} for r in comparable_summary(local)
    ]
    assert Report.model_validate_json(partial).score == resumed.rows[0].score


def test_cli_sweep_and_assess_on_ray(digits_mlp, iris_mlp, tmp_path, monkeypatch, capsys):
    """`bastion sweep --executor ray` and `bastion assess --executor ray`: progress lines as
    probes finish, the summary table, and on a rerun every pair read back, nothing run."""
    threat = tmp_path / "queries.yaml"
    threat.write_text(json.dumps(QUERIES.model_dump()))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"models:\n  - {{name: digits, path: {digits_mlp}}}\n  - {{name: iris, path: {iris_mlp}}}\n"
        "threat_models:\n  - {path: queries.yaml}\n"
    )
    assert load_sweep(sweep).threat_models[0].threat == QUERIES
    code, out, err = run_main(
        monkeypatch, capsys, "sweep", sweep, "--out", tmp_path / "o", "--executor", "ray"
    )
    assert code == 0, err
    assert out.count("✓") == 4 and "digits__queries: extraction" in out
    assert "iris__queries" in out and "summary.json" in out
    code, out, err = run_main(
        monkeypatch, capsys, "sweep", sweep, "--out", tmp_path / "o", "--executor", "ray"
    )
    assert code == 0, err
    assert "✓" not in out and out.count("existing") == 2
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        digits_mlp,
        "--threat",
        threat,
        "--out",
        tmp_path / "a",
        "--executor",
        "ray",
    )
    assert code == 0, err
    assert "✓ a: blackbox" in out and "✓ a: extraction" in out
    assert (tmp_path / "a" / "report.json").exists()


def test_a_failed_task_is_one_error_and_the_others_are_checkpointed(digits_mlp, tmp_path):
    """The evasion task fails on the worker (an attack name no registry knows, set after the
    threat model was checked): the run raises one line naming the cause, and the extraction
    task, which succeeded, is in the checkpoint for the rerun."""
    threat = QUERIES.model_copy(update={"access": "white_box", "probes": ["evasion", "extraction"]})
    plan = plan_assessment(context(digits_mlp, threat, tmp_path / "o"))
    plan.ctx.threat = plan.ctx.threat.model_copy(update={"attacks": ["nosuch"]})
    with pytest.raises(BastionError) as err:
        RayExecutor().run([plan])
    assert "\n" not in str(err.value) and "nosuch" in str(err.value)
    records = [json.loads(x) for x in (tmp_path / "o" / PARTIAL).read_text().splitlines()[1:]]
    assert [r["data"]["probe"] for r in records if r["kind"] == "probe"] == ["extraction"]


def test_a_model_that_cannot_be_pickled_is_refused(digits_mlp, tmp_path):
    model = load_model(digits_mlp)
    model.estimator = threading.Lock()  # what a runtime session holds: it cannot be pickled
    ctx = assessment_context(model, "digits", QUERIES, tmp_path / "o")
    with pytest.raises(
        ConfigError, match=r"cannot be sent to Ray workers \(TypeError: cannot pickle"
    ):
        run_assessment(ctx, RayExecutor())


def test_an_onnx_model_of_raw_features_runs_on_ray_as_locally(tmp_path):
    """A model Bastion did not make — an ONNX MLP on raw breast-cancer features — on Ray
    workers, in both ONNX forms: the onnx2torch-converted module unpickles there (onnx2torch
    needs its torchvision stand-in first) and the onnxruntime session travels as the graph's
    bytes; each report equals the local run's."""
    from bastion.cli.demo_byom import make_user_files

    csv, model = make_user_files(tmp_path)  # what a user brings: an ONNX graph and a CSV
    white_box = WHITE_BOX.model_copy(update={"probes": ["evasion", "extraction"]})
    for mode, form, threat, probes in (
        ("torch", "onnx-torch", white_box, {"evasion", "extraction"}),  # converted: gradients
        ("runtime", "onnx-runtime", QUERIES, {"blackbox", "extraction"}),  # a session: scores
    ):
        loaded = load_model(model, onnx_mode=mode)
        assert loaded.form == form

        def ctx(out: str, mode=mode, threat=threat):
            m = load_model(model, onnx_mode=mode)
            return assessment_context(m, str(csv), threat, tmp_path / mode / out, seed=1)

        local = run_assessment(ctx("local"))
        remote = run_assessment(ctx("ray"), RayExecutor())
        assert {f.probe for f in local.findings} == probes, mode
        assert comparable(remote) == comparable(local), mode
