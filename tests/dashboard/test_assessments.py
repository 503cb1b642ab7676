"""The assessment pages of the gateway's dashboard: the list (model, date, score, gate
verdict), a run's report content (summary, findings, plots as data URIs under the strict
CSP), two runs compared with the regression highlighted, and the overview's latest score
per model. Reviewer and admin see them; no session is sent to the login page."""

from __future__ import annotations

import re

from bastion.dashboard.assessments import valid_ref
from tests.dashboard.conftest import login
from tests.dashboard.runs import record_pair

IMG = re.compile(r'<img src="(data:image/png;base64,[^"]+)"')


def _pair(gw, tmp_path) -> tuple[int, int]:
    return record_pair(gw.state.settings.db_url, tmp_path / "runs")


def test_the_list_shows_every_run_with_its_score(gw, tmp_path):
    a, b = _pair(gw, tmp_path)
    login(gw, "reviewer")
    page = gw.client.get("/assessments")
    assert page.status_code == 200
    assert "img-src 'self' data:" in page.headers["content-security-policy"]
    rows = page.text.split('id="runs"')[1]
    assert f'href="/assessments/{b}"' in rows and f'href="/assessments/{a}"' in rows
    assert rows.index(f"/assessments/{b}") < rows.index(f"/assessments/{a}")  # newest first
    assert "60.0/100" in rows and "20.0/100" in rows and "not gated" in rows
    assert 'href="/assessments"' in gw.client.get("/").text  # in the nav


def test_a_run_page_renders_the_report_content(gw, tmp_path):
    _, b = _pair(gw, tmp_path)
    login(gw, "admin")
    page = gw.client.get(f"/assessments/{b}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="summary"' in html and "Most serious findings" in html
    assert "evasion · pgd" in html and "Recommended controls" in html
    assert 'id="findings"' in html and "robust_accuracy=0.2" in html
    plots = IMG.findall(html)
    assert len(plots) >= 2  # accuracy bars and the membership ROC
    assert "<style" not in html and "style=" not in html  # the CSP admits no inline style
    assert "<script>" not in html
    # since the previous run of the same model: the regression is named
    since = html.split('id="since-previous"')[1]
    assert "regression(s)" in since and "REGRESSED" in since and 'class="cmp-worse"' in since


def test_comparison_highlights_the_regression(gw, tmp_path):
    a, b = _pair(gw, tmp_path)
    login(gw, "reviewer")
    form = gw.client.get("/assessments/compare")
    assert form.status_code == 200 and 'name="a"' in form.text
    worse = gw.client.get(f"/assessments/compare?a={a}&b={b}")
    assert worse.status_code == 200
    assert 'id="regressed"' in worse.text and 'class="cmp-worse"' in worse.text
    assert "score 20.0 → 60.0" in worse.text
    better = gw.client.get(f"/assessments/compare?a={b}&b={a}")
    assert 'id="no-regression"' in better.text and 'class="cmp-worse"' not in better.text


def test_unknown_runs_are_404_pages(gw, tmp_path):
    _pair(gw, tmp_path)
    login(gw, "reviewer")
    for path in ("/assessments/999", "/assessments/dir:nope", "/assessments/..%2Fetc"):
        r = gw.client.get(path)
        assert r.status_code == 404, path
        assert "Traceback" not in r.text
    assert gw.client.get("/assessments/compare?a=1&b=999").status_code == 404
    assert not valid_ref("0") and not valid_ref("dir:../x") and valid_ref("dir:run-1")


def test_overview_shows_each_models_latest_score(gw, tmp_path):
    _, b = _pair(gw, tmp_path)
    login(gw, "reviewer")
    table = gw.client.get("/").text.split('id="latest-scores"')[1].split("</table>")[0]
    assert "tiny-cnn" in table and "60.0/100" in table and "20.0/100" not in table
    assert f'href="/assessments/{b}"' in table


def test_no_session_goes_to_login(gw, tmp_path):
    a, _ = _pair(gw, tmp_path)
    for path in ("/assessments", f"/assessments/{a}", "/assessments/compare"):
        r = gw.client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
