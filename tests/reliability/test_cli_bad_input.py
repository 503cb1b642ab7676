"""Every `bastion` subcommand × bad values of its options (issue 14): exit code 2, one line
on stderr naming the problem, never exit 0, never a traceback.

The table :data:`CASES` lists each case as (argv, expected exit code, expected substring of
stderr); ``{name}`` placeholders are filled from :func:`files` (a trained model directory
and bad data, threat, policy and recipe files). :func:`test_every_subcommand_has_cases`
fails when a subcommand has no row, so a new command cannot skip the table. Cases run
in-process through :func:`bastion.cli.main` (fast); :data:`SUBPROCESS_CASES` run a few in a
real process to show that no traceback reaches a terminal.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from bastion.cli import build_app, main

BIG = str(10**20)  # past every count, id and seed bound
NOPE = "/proc/bastion-nope/out"  # a folder that cannot be created, even by root
LLM = "llm assess --llm-model m --profile {llm_profile} --out {tmp}/l"

# (argv, exit code, substring of stderr)
CASES: list[tuple[str, int, str]] = [
    # top level
    ("nosuch", 2, "No such command 'nosuch'"),
    ("assess --nosuch", 2, "No such option: --nosuch"),
    # train
    ("train --out {tmp}/t --epochs 0", 2, "'--epochs': must be a whole number from 1"),
    ("train --out {tmp}/t --epochs abc", 2, "'--epochs': Input should be a valid integer"),
    ("train --out {tmp}/t --batch-size -1", 2, "'--batch-size'"),
    ("train --out {tmp}/t --lr nan", 2, "'--lr': must be a finite number"),
    ("train --out {tmp}/t --lr 0", 2, "'--lr': must be > 0"),
    ("train --out {tmp}/t --seed -1", 2, "'--seed': must be a whole number from 0"),
    ("train --out {tmp}/t --seed " + BIG, 2, "'--seed'"),
    ("train --out {tmp}/t --model resnet", 2, "unknown model 'resnet': choose from cnn, mlp"),
    ("train --out {tmp}/t --data cifar", 2, "unknown dataset 'cifar'"),
    ("train --out {tmp}/t --device foo", 2, "unknown device 'foo'"),
    ("train --out " + NOPE, 2, "cannot create the folder"),
    ("train --out {a_file}", 2, "exists and is not a folder"),
    # assess: names
    ("assess --model {model} --out {tmp}/o --attack nosuch", 2, "unknown attack 'nosuch'"),
    ("assess --model {model} --out {tmp}/o --threat {threat_attack}", 2, "'nosuch': choose from"),
    ("assess --model {model} --out {tmp}/o --threat {threat_probe}", 2, "unknown probe(s) 'x'"),
    ("assess --model {model} --out {tmp}/o --threat {threat_curve}", 2, "unknown curve attack"),
    ("assess --model {model} --out {tmp}/o --norm 3", 2, "unknown norm '3': choose from inf, 2"),
    ("assess --model {model} --out {tmp}/o --access god", 2, "unknown access 'god'"),
    ("assess --model {model} --out {tmp}/o --onnx-mode x", 2, "unknown ONNX mode 'x'"),
    ("assess --model {model} --out {tmp}/o --eps-mode x", 2, "unknown ε mode 'x'"),
    ("assess --model {model} --out {tmp}/o --modality x", 2, "unknown modality 'x'"),
    ("assess --model {model} --out {tmp}/o --layout x", 2, "unknown layout 'x'"),
    ("assess --model {model} --out {tmp}/o --target-output x", 2, "unknown endpoint output"),
    ("assess --model {model} --out {tmp}/o --target-body x", 2, "unknown request body form"),
    ("assess --model {model} --out {tmp}/o --device foo", 2, "unknown device 'foo'"),
    ("assess --target ftp://x --out {tmp}/o", 2, "--target must be an http(s):// URL"),
    ("assess --target openai+http://x/v1 --out {tmp}/o", 2, "give --llm-model NAME"),
    (
        "assess --target openai+ftp://x --llm-model m --profile {llm_profile} --out {tmp}/o",
        2,
        "--target must be openai+https://HOST/v1",
    ),
    (
        "assess --target openai+http://127.0.0.1:1/v1 --llm-model m --profile {llm_profile} "
        "--out {tmp}/o",
        2,
        "cannot reach",
    ),
    # assess: numbers
    ("assess --model {model} --out {tmp}/o --eps nan", 2, "ε values must be a finite number"),
    ("assess --model {model} --out {tmp}/o --eps inf", 2, "ε values must be a finite number"),
    ("assess --model {model} --out {tmp}/o --eps -0.1", 2, "ε values must be >= 0"),
    ("assess --model {model} --out {tmp}/o --n-eval 0", 2, "'--n-eval': must be a whole number"),
    ("assess --model {model} --out {tmp}/o --n-eval -3", 2, "'--n-eval'"),
    ("assess --model {model} --out {tmp}/o --n-eval " + BIG, 2, "'--n-eval'"),
    ("assess --model {model} --out {tmp}/o --scale 0", 2, "'--scale': must be > 0"),
    ("assess --model {model} --out {tmp}/o --scale inf", 2, "'--scale': must be a finite"),
    ("assess --model {model} --out {tmp}/o --seed -1", 2, "'--seed'"),
    ("assess --model {model} --out {tmp}/o --threat {threat_inf}", 2, "finite number"),
    ("assess --model {model} --out {tmp}/o --threat {threat_budget}", 2, "budgets.queries"),
    # assess: data and files
    ("assess --model {model} --out {tmp}/o --data {biglab}", 2, "labels up to 29 but model"),
    ("assess --model {model} --out {tmp}/o --data {empty}", 2, "x holds no samples"),
    ("assess --model {model} --out {tmp}/o --data {wrongshape}", 2, "takes inputs of shape"),
    ("assess --model {model} --out {tmp}/o --data {onesample}", 2, "need at least 2 samples"),
    ("assess --model {model} --out {tmp}/o --data {hugelabel}", 2, "is not a class index"),
    ("assess --model {model} --out {tmp}/o --data {objects}", 2, "holds Python objects"),
    ("assess --model {model} --out {tmp}/o --data {forged}", 2, "truncated or forged"),
    ("assess --model {model} --out {tmp}/o --data {ragged}", 2, "row 3 has 2 values"),
    ("assess --model {model} --out {tmp}/o --data {nul_csv}", 2, "not a numeric CSV"),
    ("assess --model {model} --out " + NOPE, 2, "cannot create the folder"),
    ("assess --model {evil} --out {tmp}/o", 2, "refused"),
    ("assess --model {bad_spec} --out {tmp}/o", 2, "about 1e+12 weights"),
    ("assess --model {bad_prov} --out {tmp}/o", 2, "provenance.json: not readable JSON"),
    ("assess --profile {profile_seed} --out {tmp}/o", 2, "seed: Input should be less"),
    ("assess --profile {bad_yaml} --out {tmp}/o", 2, "malformed YAML: a value does not parse"),
    ("assess --profile /nope.yaml", 2, "file not found: /nope.yaml"),
    # assess and sweep: where probes run (--executor ray: tests/scale)
    ("assess --model {model} --out {tmp}/o --executor x", 2, "unknown executor 'x'"),
    ("assess --model {model} --out {tmp}/o --address auto", 2, "--address names a Ray cluster"),
    # sweep
    ("sweep {sweep_extra} --out {tmp}/s", 2, "foo: unknown key"),
    ("sweep {sweep_no_models} --out {tmp}/s", 2, "models: List should have at least 1 item"),
    ("sweep {sweep_both} --out {tmp}/s", 2, "a `path` or an inline `threat`, not both"),
    ("sweep {sweep_dup} --out {tmp}/s", 2, "two models are named model"),
    ("sweep {sweep_inline_eps} --out {tmp}/s", 2, "threat.eps: ε values must be >= 0"),
    ("sweep {sweep_no_threat_file} --out {tmp}/s", 2, "threat_models.0: file not found"),
    ("sweep {sweep_ok}", 2, "give --out DIR (or `out:` in the sweep file)"),
    ("sweep {sweep_ok} --out {tmp}/s --executor x", 2, "unknown executor 'x'"),
    ("sweep {sweep_ok} --out {tmp}/s --address auto", 2, "--address names a Ray cluster"),
    ("sweep {sweep_ok} --out " + NOPE, 2, "cannot create the folder"),
    ("sweep {tmp}/nope.yaml --out {tmp}/s", 2, "file not found"),
    ("sweep {bad_yaml} --out {tmp}/s", 2, "malformed YAML"),
    ("sweep {profile_seed} --out {tmp}/s", 2, "model: unknown key"),
    # harden
    ("harden --model {model} --recipe nosuch --out {tmp}/h", 2, "unknown recipe 'nosuch'"),
    ("harden --model {model} --recipe {recipe_inf} --out {tmp}/h", 2, "finite number"),
    ("harden --model {model} --recipe {recipe_steps} --out {tmp}/h", 2, "less than or equal"),
    (
        "harden --model {model} --recipe standard --out {tmp}/h --allow-accuracy-drop nan",
        2,
        "'--allow-accuracy-drop': must be a finite",
    ),
    (
        "harden --model {model} --recipe standard --out {tmp}/h --allow-accuracy-drop 2",
        2,
        "must be <= 1",
    ),
    ("harden --model {model} --recipe standard --out {tmp}/h --n-eval 0", 2, "'--n-eval'"),
    ("harden --model {model} --recipe standard --out {tmp}/h --eps nan", 2, "finite"),
    ("harden --model {model} --recipe standard --out {tmp}/h --seed -4", 2, "'--seed'"),
    ("harden --model {model} --recipe standard --out " + NOPE, 2, "cannot create the folder"),
    (
        "harden --model {model} --recipe standard --out {tmp}/h --data {biglab} --no-assess",
        2,
        "labels up to 29",
    ),
    # risk
    ("risk show --sort x --register {register}", 2, "unknown sort 'x'"),
    ("risk init --system /nope.yaml --out {tmp}/r.json", 2, "file not found: /nope.yaml"),
    ("risk update --register {tmp}/r.json", 2, "nothing to update from"),
    ("risk set EVA-01 --register /nope.json --owner me", 2, "/nope.json"),
    ("risk export --out {tmp}/x.txt --register {register}", 2, "unknown export format"),
    ("risk set NOPE-1 --register {register} --owner me", 2, "no risk 'NOPE-1'"),
    ("risk set EVA-01 --register {register} --status done", 2, "unknown status 'done'"),
    ("risk report --register /nope.json --out {tmp}/r.html", 2, "/nope.json"),
    # gate and attest
    ("gate --report /nope --policy {policy_big}", 2, "too large to be a threshold"),
    ("gate --report /nope --policy {policy_metric}", 2, "unknown metric"),
    (
        "gate --report /nope --policy {policy_big} --junit " + NOPE + "/j.xml",
        2,
        "cannot create the folder",
    ),
    ("attest --report /nope", 2, "needs --report and --policy"),
    ("attest verify /nope.json --public-key /nope.pub", 2, "/nope.pub"),
    ("attest sign /nope --key /nope.key", 2, "model not found: /nope"),
    ("attest verify-model {model} --key /nope.pub", 2, "not found: /nope.pub"),
    ("bom /nope", 2, "model not found: /nope"),
    ("bom {model} --data /nope.json", 2, "dataset manifest not found: /nope.json"),
    # keys and clients
    ("keys create --role god", 2, "unknown role 'god'"),
    ("keys revoke 0", 2, "'key_id': must be a whole number from 1"),
    ("keys revoke " + BIG, 2, "'key_id'"),
    ("keys revoke -5", 2, "No such option: -5"),
    ("keys list --db postgresql://nobody@127.0.0.1:1/x", 2, ""),
    ("keys signing-init --out " + NOPE + "/k", 2, "cannot create the folder"),
    ("keys model-signing-init --curve P-1", 2, "unknown curve 'P-1'"),
    ("clients show 0", 2, "'client_id'"),
    ("clients show " + BIG, 2, "'client_id'"),
    ("clients blocked --db postgresql://nobody@127.0.0.1:1/x", 2, ""),
    ("clients block 1 --reason x --expire-after inf", 2, "--expire-after must be a finite"),
    ("clients block 1 --reason x --expire-after 0", 2, "must be > 0"),
    ("clients block 1 --reason x --expire-after 1e12", 2, "must be <="),
    ("clients block 1 --reason ' '", 2, "--reason must say why"),
    ("clients unblock " + BIG, 2, "'client_id'"),
    # guard
    ("guard fit --model {model} --fpr 0.7", 2, "--fpr must be in (0, 0.5)"),
    ("guard fit --model {model} --fpr nan", 2, "--fpr must be in (0, 0.5)"),
    ("guard fit --model {model} --onnx-mode x", 2, "unknown ONNX mode"),
    ("guard fit --model {model} --data {biglab}", 2, "labels up to 29"),
    ("guard evaluate --out {tmp}/e.json --model {model} --n 0", 2, "'--n'"),
    ("guard evaluate --out {tmp}/e.json --model {model} --steps 0", 2, "'--steps'"),
    ("guard evaluate --out {tmp}/e.json --model {model} --queries -1", 2, "'--queries'"),
    ("guard evaluate --out {tmp}/e.json --model {model} --eps nan", 2, "'--eps'"),
    ("guard evaluate --out {tmp}/e.json --model {model} --eps-mode x", 2, "unknown ε mode"),
    ("guard evaluate --out {tmp}/e.json --model {model} --seed -1", 2, "'--seed'"),
    ("guard evaluate --out " + NOPE + "/e.json --model {model}", 2, "cannot create the folder"),
    # serve (each refused before anything binds)
    ("serve --model {model} --port 0", 2, "'--port': must be a whole number from 1 to 65535"),
    ("serve --model {model} --port 70000", 2, "'--port'"),
    ("serve --model {model} --top-k 0", 2, "'--top-k'"),
    ("serve --model {model} --round 13", 2, "'--round'"),
    ("serve --model {model} --log-level loud", 2, "unknown log level 'loud'"),
    ("serve --model {model} --output all", 2, "unknown output 'all'"),
    ("serve --model {model} --scale nan", 2, "'--scale'"),
    ("serve --model /nope", 2, "model not found: /nope"),
    ("serve --model {model} --workers 0", 2, "'--workers'"),
    ("serve --model {model} --workers 2", 2, "--workers 2 shares rate limits"),
    ("serve --upstream openai+http://x/v1 --workers 2", 2, "the LLM firewall runs in one"),
    ("serve --upstream openai+http://x/v1 --config {workers_yaml}", 2, "the LLM firewall runs"),
    # serve --upstream (the LLM firewall)
    ("serve --upstream ftp://x/v1", 2, "--upstream must be openai+http://HOST/v1"),
    ("serve --upstream openai+http:///v1", 2, "--upstream 'openai+http:///v1' names no host"),
    ("serve --upstream openai+http://x/v1 --model {model}", 2, "--upstream replaces --model"),
    (
        "serve --upstream openai+http://127.0.0.1:1/v1 --profile /nope.yaml",
        2,
        "--profile /nope.yaml: no such file",
    ),
    (
        "serve --upstream openai+http://127.0.0.1:1/v1 --upstream-key-env BASTION_NO_SUCH_VAR",
        2,
        "environment variable BASTION_NO_SUCH_VAR (the upstream's API key) is not set",
    ),
    ("serve --upstream openai+http://x/v1 --upstream-key-env 1X", 2, "upstream_key_env"),
    ("serve --upstream openai+http://x/v1 --port 0", 2, "'--port'"),
    (
        "serve --upstream openai+http://x/v1 --injection-classifier /nope",
        2,
        "--injection-classifier /nope: /nope is not a directory",
    ),
    ("serve --upstream openai+http://x/v1 --injection-classifier {tmp}", 2, "no model.safetensors"),
    (
        "serve --upstream openai+http://x/v1 --injection-classifier {clf_pickled}",
        2,
        "holds pickled weights (pytorch_model.bin)",
    ),
    (
        "serve --upstream openai+http://x/v1 --injection-classifier {clf_labels}",
        2,
        "cannot tell which label is the injection one (0: SAFE, 1: RISKY)",
    ),
    ("dashboard --runs /nope", 2, "--runs /nope: no such folder"),
    ("dashboard --runs {tmp} --port 0", 2, "'--port': must be a whole number from 1 to 65535"),
    ("dashboard --runs {tmp} --db notaurl://x", 2, "cannot use database URL 'notaurl://x'"),
    ("dashboard --runs {tmp} --register /nope.json", 2, "--register /nope.json: no such file"),
    ("dashboard --runs {tmp} --log-level loud", 2, "unknown log level 'loud'"),
    (
        "dashboard --runs {tmp} --attestation-key /nope.pub",
        2,
        "--attestation-key /nope.pub: no such",
    ),
    ("dashboard --runs {tmp} --attestation-key {a_file}", 2, "not a PEM public key"),
    # audit
    ("audit verify --workers 0", 2, "'--workers': must be a whole number from 1 to 256"),
    ("audit verify --workers -1", 2, "'--workers'"),
    ("audit verify --workers 100000", 2, "'--workers'"),
    ("audit verify --db {tmp}/none.db --no-signatures", 2, "no database at"),
    ("audit verify --db {tmp}/none.db", 2, "no trusted public key"),
    ("audit show --tail 0", 2, "'--tail': must be a whole number from 1"),
    ("audit show --tail -5", 2, "'--tail'"),
    ("audit show --tail " + BIG, 2, "'--tail'"),
    ("audit prove --index -1", 2, "'--index': must be a whole number from 0"),
    ("audit prove --index " + str(2**64), 2, "'--index'"),
    ("audit prove --index 0 --size -1", 2, "'--size'"),
    ("audit consistency --old -1", 2, "'--old'"),
    ("audit consistency --old 0 --new " + str(2**64), 2, "'--new'"),
    ("audit witness --key /nope.pem --state {tmp}/w.json", 2, "/nope.pem"),
    ("audit sign --out " + NOPE + "/h.json", 2, "cannot create the folder"),
    ("audit keygen --key-file " + NOPE + "/k.pem", 2, "cannot create the folder"),
    ("audit pubkey --key-file /nope.pem", 2, "/nope.pem"),
    # scan
    ("scan /nope", 2, "path not found: /nope"),
    ("scan {model} --fail-on extreme", 2, "unknown severity 'extreme'"),
    ("scan {model} --profile nope", 2, "unknown allowlist profile 'nope'"),
    ("scan {model} --format xml", 2, "unknown format 'xml'"),
    ("scan {model} --output " + NOPE + "/s.json", 2, "cannot create the folder"),
    # runs and demo
    ("runs list --limit 0", 2, "'--limit'"),
    ("runs list --limit " + BIG, 2, "'--limit'"),
    ("runs show 0", 2, "'run_id'"),
    ("runs show 999", 2, "no run with id 999"),
    ("runs diff nonsense 999", 2, "not a run directory, a report.json or a run id"),
    ("runs diff 998 999", 2, "no run with id 998"),
    ("runs diff 1 2 --tolerance nan", 2, "'--tolerance'"),
    ("runs report nonsense", 2, "not a run directory, a report.json or a run id"),
    ("demo --seed -1", 2, "'--seed'"),
    ("demo --out " + NOPE, 2, "cannot create the folder"),
    # llm (the chat-endpoint assessment)
    (LLM + " --target https://x/v1", 2, "--target must be openai+https://HOST/v1"),
    (LLM + " --target openai+http://127.0.0.1:1/v1", 2, "cannot reach http://127.0.0.1:1/v1"),
    (LLM + " --target openai+http://x/v1 --probe nosuch", 2, "unknown LLM probe(s) nosuch"),
    (
        LLM + " --target openai+http://x/v1 --api-key-env BASTION_NO_SUCH_KEY",
        2,
        "environment variable BASTION_NO_SUCH_KEY",
    ),
    (
        "llm assess --target openai+http://x/v1 --llm-model m --profile /nope.yaml --out {tmp}/l",
        2,
        "file not found: /nope.yaml",
    ),
    (
        "llm assess --target openai+http://x/v1 --llm-model m --profile {llm_bad_yaml} "
        "--out {tmp}/l",
        2,
        "malformed YAML",
    ),
    (
        "llm assess --target openai+http://x/v1 --llm-model m --profile {llm_no_prompt} "
        "--out {tmp}/l",
        2,
        "system_prompt: Field required",
    ),
    (LLM + " --target openai+http://x/v1 --out " + NOPE, 2, "cannot create the folder"),
    (LLM + " --target openai+http://x/v1 --judge ftp://j", 2, "--judge 'ftp://j': give an"),
    (LLM + " --target openai+http://x/v1 --judge openai+http://j/v1", 2, "give --judge-model"),
    (LLM + " --target openai+http://x/v1 --judge-model m", 2, "need --judge URL"),
    (
        LLM + " --target openai+http://x/v1 --judge openai+http://j/v1 --judge-model m "
        "--judge-key-env BASTION_NO_SUCH_KEY",
        2,
        "environment variable BASTION_NO_SUCH_KEY",
    ),
    ("assess --model {model} --out {tmp}/o --judge openai+http://j/v1", 2, "--judge grades"),
    ("llm train-classifier --out {tmp}/c --epochs 0", 2, "'--epochs'"),
    ("llm train-classifier --out {tmp}/c --seed -1", 2, "'--seed'"),
    ("llm train-classifier --out {tmp}/c --seed 20261203", 2, "is the held-out seed"),
    ("llm train-classifier --out " + NOPE, 2, "cannot create the folder"),
    ("llm train-classifier --out {a_file}", 2, "exists and is not a folder"),
]

SUBPROCESS_CASES = [
    ("assess --model {model} --out {tmp}/o --eps nan", "finite"),
    ("audit show --tail -1", "'--tail'"),
    ("assess --model {evil} --out {tmp}/o", "refused"),
    ("assess --model {model} --out {tmp}/o --data {wrongshape}", "takes inputs of shape"),
]


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_model_dir) -> dict[str, str]:
    """The model and the bad files the table refers to."""
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("bad-input")
    raw = load_digits()
    x = (raw.data / 16).astype("float32").reshape(-1, 1, 8, 8)
    y = raw.target
    out = {"model": str(digits_model_dir), "a_file": str(d / "a-file")}
    (d / "a-file").write_text("not a folder")
    out["biglab"] = _npz(d / "biglab.npz", x=x, y=y + 20)
    out["empty"] = _npz(d / "empty.npz", x=x[:0], y=y[:0])
    out["wrongshape"] = _npz(d / "wrongshape.npz", x=np.random.rand(50, 3, 5, 5), y=y[:50])
    out["onesample"] = _npz(d / "onesample.npz", x=x[:1], y=y[:1])
    out["hugelabel"] = _npz(d / "hugelabel.npz", x=x[:20], y=np.full(20, 1e15))
    objects = d / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=object), y=y[:2])
    out["objects"] = str(objects)
    import zipfile

    from tests.reliability.fuzzing import forged_npy

    with zipfile.ZipFile(d / "forged.npz", "w") as zf:
        zf.writestr("x.npy", forged_npy((10**12,)))
        zf.writestr("y.npy", forged_npy((3,)))
    out["forged"] = str(d / "forged.npz")
    (d / "ragged.csv").write_text("label,a,b\n0,1,2\n1,2\n")
    out["ragged"] = str(d / "ragged.csv")
    (d / "nul.csv").write_text("label,a\n0,1\x00\n")
    out["nul_csv"] = str(d / "nul.csv")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(d / "EXECUTED"),))

    evil = d / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": Payload()}, protocol=2))
    out["evil"] = str(evil)
    bad_spec = d / "bad-spec"
    bad_spec.mkdir()
    (bad_spec / "spec.json").write_text(
        '{"name": "mlp", "params": {"input_shape": [64], "num_classes": 10, "hidden": 1000000}}'
    )
    (bad_spec / "model.safetensors").write_bytes(b"")
    out["bad_spec"] = str(bad_spec)
    bad_prov = d / "bad-prov"
    bad_prov.mkdir()
    for f in Path(digits_model_dir).iterdir():
        (bad_prov / f.name).write_bytes(f.read_bytes())
    (bad_prov / "provenance.json").write_text("{not json")
    out["bad_prov"] = str(bad_prov)
    for name, labels, weights in (
        ("clf_pickled", {"0": "SAFE", "1": "INJECTION"}, "pytorch_model.bin"),
        ("clf_labels", {"0": "SAFE", "1": "RISKY"}, "model.safetensors"),
    ):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps({"id2label": labels}))
        (d / name / weights).write_bytes(b"")
        out[name] = str(d / name)
    from importlib import resources

    from bastion.risk.register import build_register, save_register
    from bastion.risk.system import load_system

    system = resources.files("bastion.risk").joinpath("examples/system.yaml")
    with resources.as_file(system) as path:
        out["register"] = str(save_register(build_register(load_system(path)), d / "reg.json"))
    texts = {
        "threat_attack": "attacks: [pgd, nosuch]\n",
        "threat_probe": "skip: [x]\n",
        "threat_curve": "curve_attack: zzz\n",
        "threat_inf": "eps: [.inf]\n",
        "threat_budget": f"budgets: {{queries: {10**20}}}\n",
        "profile_seed": f"model: {digits_model_dir}\nseed: {2**40}\n",
        "sweep_ok": f"models: [{{path: {digits_model_dir}}}]\nthreat_models: [{{name: a, threat: {{}}}}]\n",
        "sweep_extra": f"models: [{{path: {digits_model_dir}}}]\nthreat_models: [{{name: a, threat: {{}}}}]\nfoo: 1\n",
        "sweep_no_models": "models: []\nthreat_models: [{name: a, threat: {}}]\n",
        "sweep_both": f"models: [{{path: {digits_model_dir}}}]\nthreat_models: [{{name: a, path: t.yaml, threat: {{}}}}]\n",
        "sweep_dup": "models: [{path: x/model}, {path: y/model}]\nthreat_models: [{name: a, threat: {}}]\n",
        "sweep_inline_eps": f"models: [{{path: {digits_model_dir}}}]\nthreat_models: [{{name: a, threat: {{eps: [-1]}}}}]\n",
        "sweep_no_threat_file": f"models: [{{path: {digits_model_dir}}}]\nthreat_models: [{{path: nothere.yaml}}]\n",
        "bad_yaml": "model: m\nseed: !!int abc\n",
        "recipe_inf": "- standard: {lr: .inf}\n",
        "recipe_steps": f"- pgd_at: {{steps: {10**12}}}\n",
        "policy_big": "rules:\n  - score <= 1e999\n",
        "policy_metric": "rules:\n  - nosuch_metric >= 1\n",
        "llm_profile": "system_prompt: You are a helpful assistant.\nattempts: 1\n",
        "llm_bad_yaml": "system_prompt: [unclosed\n",
        "llm_no_prompt": "tools: []\n",
        "workers_yaml": "workers: 2\n",
    }
    for name, text in texts.items():
        (d / f"{name}.yaml").write_text(text)
        out[name] = str(d / f"{name}.yaml")
    return out


def run(monkeypatch, capsys, argv: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    got = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), got.out, got.err


def fill(template: str, files: dict[str, str], tmp: Path) -> list[str]:
    import shlex

    return [part.format(tmp=tmp, **files) for part in shlex.split(template)]


def assert_one_line_error(code: int, out: str, err: str, want_code: int, want: str) -> None:
    assert "Traceback" not in out + err, err
    assert code == want_code, f"exit {code}, stderr {err!r}, stdout tail {out[-300:]!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    assert want in lines[0], f"{want!r} not in {lines[0]!r}"


@pytest.mark.parametrize(("template", "code", "want"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(
    monkeypatch, capsys, tmp_path, files, template: str, code: int, want: str
) -> None:
    argv = fill(template, files, tmp_path)
    got_code, out, err = run(monkeypatch, capsys, argv)
    assert_one_line_error(got_code, out, err, code, want)
    if "weights_only" in err or "refused" in err:
        assert "weights_only" not in err, "the refusal must never suggest weights_only=False"
    assert not (Path(files["evil"]).parent / "EXECUTED").exists()


def _leaf_commands() -> list[str]:
    root = typer.main.get_command(build_app())
    paths: list[str] = []

    def walk(cmd, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            if getattr(cmd, "invoke_without_command", False):
                paths.append(" ".join(path))
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            paths.append(" ".join(path))

    walk(root, [])
    return [p for p in paths if p]


def test_every_subcommand_has_cases() -> None:
    covered = {" ".join(t.split()[:2]) for t, _, _ in CASES} | {t.split()[0] for t, _, _ in CASES}
    missing = [c for c in _leaf_commands() if c not in covered]
    assert not missing, f"subcommands without a bad-input case: {missing}"


def test_corrupt_harden_checkpoint_is_one_line(monkeypatch, capsys, tmp_path, files) -> None:
    """A planted corrupt checkpoint in a harden resume folder: refused with one line naming
    it (and how to recover), whether truncated, a code-executing pickle, or the wrong shape."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- standard: {epochs: 1}\n")
    argv = ["harden", "--model", files["model"], "--recipe", str(recipe), "--out"]
    argv += [
        str(tmp_path / "h"),
        "--no-assess",
        "--no-backdoor-check",
        "--allow-accuracy-drop",
        "1",
    ]
    code, _, err = run(monkeypatch, capsys, argv)
    assert code == 0, err
    (ckpt,) = (tmp_path / "h" / ".harden").glob("*/standard.ckpt")
    good = ckpt.read_bytes()
    planted = {
        "truncated": (good[:300], "cannot read the resume checkpoint"),
        "empty": (b"", "cannot read the resume checkpoint"),
        "pickle": (Path(files["evil"]).read_bytes(), "refused"),
    }
    for what, (data, want) in planted.items():
        ckpt.write_bytes(data)
        code, out, err = run(monkeypatch, capsys, argv)
        assert_one_line_error(code, out, err, 2, want)
        assert "weights_only" not in err, what
    assert not (Path(files["evil"]).parent / "EXECUTED").exists()


@pytest.mark.parametrize(("template", "want"), SUBPROCESS_CASES)
def test_no_traceback_reaches_a_terminal(tmp_path, files, template: str, want: str) -> None:
    argv = fill(template, files, tmp_path)
    env = {**os.environ, "BASTION_DB": f"sqlite:///{tmp_path / 'b.db'}", "BASTION_PROGRESS": "0"}
    env.pop("BASTION_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bastion.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, 2, want)
