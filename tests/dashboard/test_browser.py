"""The dashboard in a real browser: Playwright driving Debian's chromium against a real
`bastion serve` process on a free loopback port, with a guard that holds odd inputs.

Skipped (with the reason) when /usr/bin/chromium or the playwright package is missing;
`playwright install` is never run (no browser download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from bastion.risk.register import build_register, save_register
from bastion.risk.system import load_system
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.dashboard.runs import record_pair
from tests.ports import free_port
from tests.processes import stop, wait_healthy

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e .[dev])"
)
pytestmark = pytest.mark.browser
EXAMPLE = Path(__file__).parents[2] / "src" / "bastion" / "risk" / "examples" / "system.yaml"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class Server:
    base: str
    keys: dict[str, str]  # role -> secret
    ids: dict[str, int]
    model: str
    odd: list  # a sample the guard holds
    run_ids: tuple[int, int] = (0, 0)  # two recorded assessments of one model (B regressed)

    def api(self, role: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=10
        )


def _guarded_model(digits_model_dir: Path, train, out: Path) -> Path:
    """The digits model with a z-score-only guard that holds what it finds extreme."""
    from bastion.guard.config import GuardConfig
    from bastion.guard.guard import fit_guard
    from bastion.models.io import load_model

    shutil.copytree(digits_model_dir, out)
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
    fit_guard(load_model(out).module, train, config=config).save(out)
    return out


@pytest.fixture(scope="module")
def server(digits, digits_model_dir, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    model = _guarded_model(digits_model_dir, digits.train, tmp / "model")
    db = f"sqlite:///{tmp / 'gw.db'}"
    register = save_register(build_register(load_system(EXAMPLE)), tmp / "register.json")
    config = tmp / "serve.yaml"
    config.write_text(f"risk_register: {register}\n")
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
    run_ids = record_pair(db, tmp / "runs")
    port = free_port()
    cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(model), "--db", db]
    cmd += ["--config", str(config), "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "BASTION_LOG": "WARNING", "BASTION_DB": db}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(proc, base, lambda: proc.stdout.read().decode(), timeout_s=60)
        assert health["guard"] is True
        odd = (torch.arange(64).reshape(1, 8, 8) % 2).float().tolist()  # a checkerboard
        yield Server(base, keys, ids, health["model"], odd, run_ids)
    finally:
        stop(proc, timeout_s=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(base_url=server.base)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.csp_errors = []
    pg.on(
        "console",
        lambda m: pg.csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield pg
    assert pg.csp_errors == []  # nothing on any page was refused by the CSP
    context.close()


def _login(page, server: Server, role: str) -> None:
    page.goto("/")
    assert page.url.startswith(f"{server.base}/login")
    page.get_by_label("API key").fill(server.keys[role])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server.base}/")


def test_login_overview_logout(page, server):
    page.goto("/monitor")
    assert "/login?next=%2Fmonitor" in page.url
    key = page.get_by_label("API key")
    key.focus()  # by keyboard: type the key and press Enter
    page.keyboard.type(server.keys["reviewer"])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.base}/monitor")
    page.get_by_role("link", name="Overview").click()
    sync_api.expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    sync_api.expect(page.locator("#model")).to_have_text(server.model)
    sync_api.expect(page.locator("#guard")).to_have_text("on")
    sync_api.expect(page.locator("#who")).to_have_text("rita reviewer · reviewer")
    # the key is nowhere in the browser: not in storage, not in a script-readable cookie
    stored = page.evaluate(
        "() => document.cookie + JSON.stringify(sessionStorage) + JSON.stringify(localStorage)"
    )
    assert server.keys["reviewer"] not in stored and "bastion_session" not in stored
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "bastion_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert server.keys["reviewer"] not in cookie["value"]
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{server.base}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "bastion_session"]
    page.context.add_cookies([{**cookie}])  # the old cookie no longer opens anything
    page.goto("/")
    assert page.url.startswith(f"{server.base}/login")


def test_reviewer_approves_a_held_request_and_sees_its_audit_entry(page, server):
    with server.api("client") as client:
        held = client.post("/v1/predict", json={"inputs": [server.odd]})
    assert held.status_code == 202, held.text
    ticket = held.json()["ticket"]
    _login(page, server, "reviewer")
    page.get_by_role("link", name="Review queue").click()
    card = page.locator(f"#ticket-{ticket}")
    sync_api.expect(card).to_contain_text("acme")
    sync_api.expect(card).to_contain_text("is extreme")
    image = card.get_by_role("img")
    sync_api.expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0  # the PNG rendered
    card.get_by_label("Comment").fill("checkerboard test pattern, harmless")
    card.get_by_role("button", name="Approve").click()
    sync_api.expect(page.locator("#done")).to_have_text("The request was approved.")
    decided = page.locator("#decided-table")
    sync_api.expect(decided).to_contain_text("checkerboard test pattern, harmless")
    sync_api.expect(decided).to_contain_text("rita reviewer")
    with server.api("client") as client:
        assert client.get(f"/v1/tickets/{ticket}").json()["status"] == "approved"

    page.get_by_role("link", name="Audit").click()
    row = page.locator("#audit-entries tr", has_text=f"ticket {ticket} approved")
    sync_api.expect(row).to_contain_text("checkerboard test pattern")
    row.get_by_role("link").click()
    sync_api.expect(page.locator("#proof-result")).to_contain_text("The proof checks")
    sync_api.expect(page.locator("#entry-json")).to_contain_text(ticket)


def test_admin_lifts_a_block_that_a_reviewer_cannot(page, server):
    cid = server.ids["client2"]
    with server.api("admin") as admin:
        r = admin.put(f"/v1/clients/{cid}/block", json={"reason": "scraping the catalogue"})
        assert r.status_code == 200
    with server.api("client2") as client:
        assert client.post("/v1/predict", json={"inputs": [server.odd]}).status_code == 403
    with server.api("reviewer") as reviewer:  # the API refuses the reviewer
        assert reviewer.delete(f"/v1/clients/{cid}/block").status_code == 403

    _login(page, server, "reviewer")  # and so does the UI
    assert page.get_by_role("link", name="Clients").count() == 0
    response = page.goto("/clients")
    assert response.status == 403
    sync_api.expect(page.locator("#error-detail")).to_contain_text("needs the role admin")
    page.get_by_role("button", name="Log out").click()

    _login(page, server, "admin")
    page.get_by_role("link", name="Clients").click()
    row = page.locator(f"#block-{cid}")
    sync_api.expect(row).to_contain_text("globex")
    sync_api.expect(row).to_contain_text("scraping the catalogue")
    row.get_by_role("button", name="Unblock globex").click()
    sync_api.expect(page.locator("#done")).to_have_text("Client globex was unblocked.")
    sync_api.expect(page.locator("#blocked-table")).to_contain_text("no client is blocked")
    with server.api("client2") as client:
        sample = [[[0.0] * 8 for _ in range(8)]]
        assert client.post("/v1/predict", json={"inputs": [sample]}).status_code in (200, 202)


def test_monitor_updates_live(page, server):
    _login(page, server, "admin")
    page.get_by_role("link", name="Monitor").click()
    before = int(page.locator("#requests").inner_text())
    with server.api("client") as client:
        for _ in range(3):
            client.post("/v1/predict", json={"inputs": [[[[0.0] * 8 for _ in range(8)]]]})
    sync_api.expect(page.locator("#requests")).not_to_have_text(str(before), timeout=12_000)
    assert int(page.locator("#requests").inner_text()) >= before + 3
    sync_api.expect(page.locator("#live-status")).to_contain_text("updated")
    # the guard's detector scores, drawn against its threshold
    figure = page.locator("#distributions figure").first
    sync_api.expect(figure).to_contain_text("threshold")
    assert figure.locator("svg line.threshold").count() == 1
    # this guard runs no per-key detector, and the page says so rather than "no alerts"
    sync_api.expect(page.locator("#no-watch")).to_contain_text("no per-key detector")


def test_a_reviewer_cannot_edit_a_risk_but_an_admin_can(page, server):
    with server.api("reviewer") as reviewer:  # the API refuses the reviewer
        r = reviewer.patch("/v1/risks/EVA-01", json={"owner": "rita"})
        assert r.status_code == 403
        assert reviewer.get("/v1/risks/EVA-01").json()["owner"] == "ml-team"
    _login(page, server, "reviewer")
    page.get_by_role("link", name="Risk register").click()
    sync_api.expect(page.locator("#heat-map")).to_be_visible()
    page.locator("#risk-EVA-01").get_by_role("link", name="EVA-01").click()
    sync_api.expect(page.locator("#read-only")).to_be_visible()
    assert page.get_by_role("button", name="Set owner").count() == 0
    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    denied = page.request.post(  # the session's own cookie and CSRF token: still 403
        "/risks/EVA-01/edit", form={"csrf_token": csrf, "what": "owner", "owner": "rita"}
    )
    assert denied.status == 403 and "needs the role admin" in denied.text()
    page.get_by_role("button", name="Log out").click()

    _login(page, server, "admin")
    page.goto("/risks/EVA-01")
    page.get_by_label("Owner").fill("model risk office")
    page.get_by_role("button", name="Set owner").click()
    sync_api.expect(page.locator("#done")).to_be_visible()
    sync_api.expect(page.locator("#owner")).to_have_text("model risk office")
    sync_api.expect(page.locator("#history")).to_contain_text("ada admin")
    with server.api("reviewer") as reviewer:
        assert reviewer.get("/v1/risks/EVA-01").json()["owner"] == "model risk office"


def test_the_report_page_renders_its_plots(page, server):
    _login(page, server, "reviewer")
    page.get_by_role("link", name="Assessments").click()
    page.get_by_role("link", name=str(server.run_ids[1]), exact=True).click()
    assert page.get_by_role("heading", name="Summary").is_visible()
    plots = page.locator("#evidence img")
    assert plots.count() >= 2
    for i in range(plots.count()):
        img = plots.nth(i)
        img.scroll_into_view_if_needed()
        assert img.evaluate("el => el.complete && el.naturalWidth > 0"), i
    assert page.locator("#since-previous tr.cmp-worse").count() >= 1
