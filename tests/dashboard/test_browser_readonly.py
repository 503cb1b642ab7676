"""The read-only dashboard in a real browser: `bastion dashboard --runs DIR --db URL
--register R --attestation-key PUB` as a process (no model), Playwright driving Debian's
chromium. An admin logs in, sees the recorded runs with each model's gate verdict and a
verified attestation, opens a report, finds no monitor and cannot edit a risk (403 in the
page, even with the session's own CSRF token), and logs out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bastion.gate.attest import sign_statement, write_envelope
from bastion.gate.keys import generate_signing_key, load_signing_key
from bastion.risk.register import build_register, save_register
from bastion.risk.system import load_system
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.dashboard.runs import record_pair, run_folder
from tests.dashboard.test_browser import CHROMIUM, EXAMPLE, LAUNCH_ARGS, sync_api
from tests.dashboard.test_monitor import attestation_statement
from tests.ports import free_port
from tests.processes import stop

pytestmark = pytest.mark.browser
assert CHROMIUM.exists()  # test_browser skips the module otherwise


@dataclass
class ReadOnly:
    base: str
    keys: dict[str, str]
    run_ids: tuple[int, int]


def _wait_up(proc: subprocess.Popen, base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dashboard exited: {proc.stdout.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{base}/login", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"dashboard did not start within {timeout_s:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def readonly(tmp_path_factory) -> Iterator[ReadOnly]:
    tmp = tmp_path_factory.mktemp("dashboard-readonly")
    db = f"sqlite:///{tmp / 'store.db'}"
    engine = make_engine(db)
    keys = {}
    for role, name in (("reviewer", "rita reviewer"), ("admin", "ada admin")):
        keys[role] = create_key(engine, role, name)[1]
    engine.dispose()
    runs = tmp / "runs"
    run_ids = record_pair(db, runs)
    signing = generate_signing_key(tmp / "keys" / "signing.key")
    folder = run_folder(runs, "released", passed=True)
    write_envelope(
        sign_statement(attestation_statement(folder), load_signing_key(signing.private)),
        folder / "attestation.dsse.json",
    )
    register = save_register(build_register(load_system(EXAMPLE)), tmp / "register.json")
    port = free_port()
    cmd = [sys.executable, "-m", "bastion.cli", "dashboard", "--runs", str(runs), "--db", db]
    cmd += ["--register", str(register), "--attestation-key", str(signing.public)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "BASTION_LOG": "WARNING"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(proc, base)
        yield ReadOnly(base, keys, run_ids)
    finally:
        stop(proc, timeout_s=20)


@pytest.fixture()
def page(readonly) -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        context = browser.new_context(base_url=readonly.base)
        pg = context.new_page()
        pg.set_default_timeout(10_000)
        refused: list[str] = []
        pg.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
        yield pg
        assert refused == []
        browser.close()


def test_an_admin_reads_everything_and_edits_nothing(page, readonly):
    page.goto("/")
    assert "/login" in page.url
    page.get_by_label("API key").fill(readonly.keys["admin"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{readonly.base}/")
    sync_api.expect(page.locator("#read-only")).to_be_visible()
    assert page.get_by_role("link", name="Monitor").count() == 0  # no model: no monitor
    table = page.locator("#latest-scores")
    released = table.locator("tr", has_text="other")
    sync_api.expect(released.locator("td.attestation")).to_have_text("verified")
    sync_api.expect(released).to_contain_text("PASS")
    tiny = table.locator("tr", has_text="tiny-cnn")
    sync_api.expect(tiny.locator("td.attestation")).to_have_text("not attested")

    page.get_by_role("link", name="Assessments").click()
    page.get_by_role("link", name=str(readonly.run_ids[1]), exact=True).click()
    sync_api.expect(page.get_by_role("heading", name="Summary")).to_be_visible()
    assert page.goto("/monitor").status == 404

    page.goto("/risks/EVA-01")
    sync_api.expect(page.locator("#read-only")).to_contain_text("even for an admin")
    assert page.get_by_role("button", name="Set owner").count() == 0
    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    denied = page.request.post(
        "/risks/EVA-01/edit", form={"csrf_token": csrf, "what": "owner", "owner": "mallory"}
    )
    assert denied.status == 403 and "read-only" in denied.text()
    page.goto("/risks/EVA-01")
    sync_api.expect(page.locator("#owner")).not_to_have_text("mallory")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{readonly.base}/login")
    page.goto("/")
    assert "/login" in page.url
