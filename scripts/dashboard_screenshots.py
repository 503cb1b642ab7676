#!/usr/bin/env python3
"""Screenshots of every dashboard page into docs/img/ (``dashboard-<page>.png``).

Builds a tiny digits CNN and a z-score guard that holds odd inputs, starts a real
`bastion serve` on a free loopback port with keys of every role, sends some traffic (allowed
requests, a held one, a blocked client), then drives Debian's chromium with Playwright
through the pages as an admin (two real assessments of the model recorded first) (and the 403 page as a reviewer). Needs /usr/bin/chromium and
the playwright package (``pip install -e .[dev]``; never ``playwright install``).

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(out: Path) -> Path:
    """A small digits CNN with a z-score-only guard (holds what it finds extreme)."""
    import torch

    from bastion.data import load_dataset
    from bastion.guard.config import GuardConfig
    from bastion.guard.guard import fit_guard
    from bastion.models.io import save_model
    from bastion.models.train import train_model
    from bastion.models.zoo import build_model, zoo_spec

    digits = load_dataset("digits")
    torch.manual_seed(0)
    spec = zoo_spec("cnn", digits.train.shape, digits.train.num_classes, width=16, hidden=64)
    module = build_model(spec)
    train_model(module, digits.train, epochs=8, seed=0)
    recipe = {"epochs": 8, "lr": 1e-3, "batch_size": 64, "seed": 0}
    save_model(module, spec, out, provenance={"data": "digits", "recipe": recipe})
    off = {"enabled": False}
    config = GuardConfig.model_validate(
        {
            "detectors": {"mahalanobis": off, "reconstruction": off, "squeeze": off},
            "drift": off,
            "extraction": off,
            "query": {"similarity": off, "coverage": off},
            "policy": {"flag_at": 1, "hold_at": 1},
        }
    )
    fit_guard(module, digits.train, config=config).save(out)
    return out


def _register_config(tmp: Path) -> Path:
    """serve.yaml naming a risk register built from the packaged example system."""
    from bastion.risk.register import build_register, save_register
    from bastion.risk.system import load_system

    example = ROOT / "src" / "bastion" / "risk" / "examples" / "system.yaml"
    register = save_register(build_register(load_system(example)), tmp / "register.json")
    config = tmp / "serve.yaml"
    config.write_text(f"risk_register: {register}\n")
    return config


def _assessments(model: Path, tmp: Path) -> None:
    """Two real assessments of the model, recorded in the store (``$BASTION_DB``): the
    second at a larger ε, so that the comparison page has something to show."""
    from bastion.assess.api import assess_model_dir
    from bastion.assess.schema import ThreatModel

    for i, eps in enumerate((0.05, 0.1)):
        assess_model_dir(model, tmp / f"assess-{i}", threat=ThreatModel(eps=[eps]), seed=i)


def _traffic(base: str, keys: dict[str, str], ids: dict[str, int]) -> None:
    import httpx

    from bastion.data import load_dataset

    test = load_dataset("digits").test.x
    client = {"Authorization": f"Bearer {keys['client']}"}
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        for i in range(0, 40, 4):
            http.post("/v1/predict", json={"inputs": test[i : i + 4].tolist()}, headers=client)
        odd = test[:1].clone()
        odd.view(-1)[::2] = 1.0
        odd.view(-1)[1::2] = 0.0
        http.post("/v1/predict", json={"inputs": odd.tolist()}, headers=client)
        http.post("/v1/predict", json={"inputs": [test[5].tolist()]}, headers=client)
        r = http.put(
            f"/v1/clients/{ids['client2']}/block",
            json={"reason": "query volume far above its contract"},
            headers=admin,
        )
        r.raise_for_status()


def _shoot(base: str, keys: dict[str, str], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
        page = context.new_page()

        def shot(name: str) -> None:
            path = out / f"dashboard-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)

        def login(role: str) -> None:
            page.goto("/login")
            page.get_by_label("API key").fill(keys[role])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{base}/")

        page.goto("/login")
        shot("login")
        login("admin")
        shot("overview")
        for name, path in (
            ("reviews", "/reviews"),
            ("risks", "/risks"),
            ("risk", "/risks/EVA-01"),
            ("clients", "/clients"),
            ("audit", "/audit"),
            ("audit-entry", "/audit/entries/0"),
            ("monitor", "/monitor"),
            ("assessments", "/assessments"),
            ("assessment", "/assessments/2"),
            ("assessment-compare", "/assessments/compare?a=1&b=2"),
        ):
            page.goto(path)
            shot(name)
        page.goto("/audit")
        page.get_by_role("button", name="Verify now").click()
        shot("audit-verify")
        page.get_by_role("button", name="Log out").click()
        login("reviewer")
        page.goto("/clients")
        shot("forbidden")
        browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} is not installed", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: the playwright package is missing: pip install -e .[dev]", file=sys.stderr)
        return 2
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bastion-shots-") as tmp:
        model = _model(Path(tmp) / "model")
        db = f"sqlite:///{Path(tmp) / 'gw.db'}"
        config = _register_config(Path(tmp))
        engine = make_engine(db)
        keys, ids = {}, {}
        for role, name in (
            ("client", "acme"),
            ("client2", "globex"),
            ("reviewer", "rita reviewer"),
            ("admin", "ada admin"),
        ):
            info, secret = create_key(engine, role.removesuffix("2"), name)
            keys[role], ids[role] = secret, info.id
        engine.dispose()
        os.environ["BASTION_DB"] = db
        _assessments(model, Path(tmp))
        port = _free_port()
        cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(model), "--db", db]
        cmd += ["--config", str(config), "--port", str(port), "--log-level", "warning"]
        env = {**os.environ, "BASTION_LOG": "WARNING", "BASTION_DB": db}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    print(proc.stdout.read().decode()[-2000:], file=sys.stderr)
                    return 1
                try:
                    httpx.get(f"{base}/healthz", timeout=5).raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        print("error: the server did not start within 60 s", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            _traffic(base, keys, ids)
            for path in _shoot(base, keys, args.out):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
