"""`bastion dashboard --runs DIR --db URL`: the dashboard read-only, without a model. Its
pages render from the store and the run folders; every edit is refused (403) whatever the
role; the monitor (a served model's) is absent; bad input is one line and exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from bastion.dashboard.readonly import create_readonly_app
from bastion.risk.register import build_register, load_register, save_register
from bastion.risk.system import load_system
from bastion.serve.settings import ServeSettings
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.cli_runner import run_main
from tests.dashboard.conftest import Gateway, csrf_of, login
from tests.dashboard.runs import record_pair, run_folder
from tests.dashboard.test_risks import EXAMPLE
from tests.ports import free_port


@pytest.fixture()
def store(tmp_path) -> tuple[str, Path, Path]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    runs_dir = tmp_path / "runs"
    record_pair(url, runs_dir)  # the stored runs' folders are in runs_dir too
    run_folder(runs_dir)
    register = save_register(build_register(load_system(EXAMPLE)), tmp_path / "register.json")
    return url, runs_dir, register


@pytest.fixture()
def ro(store) -> Iterator[Gateway]:
    url, runs_dir, register = store
    engine = make_engine(url)
    keys, ids = {}, {}
    for role in ("client", "reviewer", "admin"):
        info, secret = create_key(engine, role, f"test {role}")
        keys[role], ids[role] = secret, info.id
    engine.dispose()
    settings = ServeSettings(db_url=url, risk_register=register, auth={"cache_ttl_s": 0.0})
    with TestClient(create_readonly_app(settings, runs_dir)) as client:
        yield Gateway(client, keys, ids)


def test_pages_render_without_a_model(ro):
    login(ro, "admin")
    home = ro.client.get("/")
    assert home.status_code == 200 and 'id="read-only"' in home.text
    assert 'id="latest-scores"' in home.text and 'id="rate"' not in home.text
    assert 'href="/monitor"' not in home.text and 'href="/assessments"' in home.text
    listing = ro.client.get("/assessments").text
    # the two stored runs once each (their folders are not listed again) and the folder run
    assert listing.count('href="/assessments/dir:') == 1
    assert 'href="/assessments/dir:other-run"' in listing and "FAIL" in listing
    folder = ro.client.get("/assessments/dir:other-run")
    assert folder.status_code == 200 and "FAIL" in folder.text and 'id="summary"' in folder.text
    for path in ("/risks", "/risks/EVA-01", "/reviews", "/clients", "/audit"):
        r = ro.client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
    assert ro.client.get("/monitor").status_code == 404
    assert ro.client.get("/v1/predict").status_code == 404  # no JSON API, no predict route
    risk = ro.client.get("/risks/EVA-01").text
    assert 'id="read-only"' in risk and 'action="/risks/EVA-01/edit"' not in risk


def test_edits_are_refused_even_for_an_admin(ro, store):
    _, _, register = store
    csrf = login(ro, "admin")
    before = load_register(register).get("EVA-01").owner
    for path, form in (
        ("/risks/EVA-01/edit", {"what": "owner", "owner": "mallory"}),
        ("/reviews/abc/decide", {"action": "approve"}),
        (f"/clients/{ro.ids['client']}/unblock", {}),
    ):
        r = ro.client.post(path, data={**form, "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 403, path
        assert "read-only" in r.text
    assert load_register(register).get("EVA-01").owner == before
    out = ro.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303  # logging out still works
    assert ro.client.get("/", follow_redirects=False).status_code == 303


def test_a_reviewer_views_and_a_client_cannot_log_in(ro):
    login(ro, "reviewer")
    assert ro.client.get("/assessments").status_code == 200
    assert ro.client.get("/clients").status_code == 403  # admin's page, as under serve
    ro.client.cookies.clear()
    form = ro.client.get("/login").text
    r = ro.client.post("/login", data={"key": ro.keys["client"], "csrf_token": csrf_of(form)})
    assert r.status_code == 403


def _one_line(code: int, out: str, err: str, match: str) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "dashboard (read-only) on" not in out
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], err


@pytest.fixture()
def no_serving(monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", never)


def test_cli_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, no_serving):
    db = f"sqlite:///{tmp_path / 's.db'}"
    missing = tmp_path / "nope"
    _one_line(*run_main(monkeypatch, capsys, "dashboard", "--runs", missing, "--db", db), "nope")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    _one_line(
        *run_main(monkeypatch, capsys, "dashboard", "--runs", afile, "--db", db), "not a folder"
    )
    _one_line(
        *run_main(monkeypatch, capsys, "dashboard", "--runs", tmp_path, "--db", "nosuch://x"),
        "database URL",
    )
    _one_line(
        *run_main(monkeypatch, capsys, "dashboard", "--runs", tmp_path, "--db", db, "--port", "0"),
        "--port",
    )


def test_cli_serves_the_read_only_app(monkeypatch, capsys, store):
    url, runs_dir, _ = store
    served = []

    def fake_run(self, sockets=None):
        served.append((self.config.app, sockets[0].getsockname()))

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    port = free_port()
    code, out, err = run_main(
        monkeypatch, capsys, "dashboard", "--runs", runs_dir, "--db", url, "--port", port
    )
    assert code == 0, err
    assert f"dashboard (read-only) on http://127.0.0.1:{port}" in out
    ((app, address),) = served
    assert app.state.dashboard_read_only is True and address[1] == port
    assert app.state.dashboard_runs_dir == runs_dir.resolve()
