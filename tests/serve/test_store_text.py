"""Text the record store could keep on SQLite but not on PostgreSQL (a NUL character) is
refused at the API with 422, on every store alike."""

from __future__ import annotations


def test_nul_in_a_key_name_is_422(gw):
    r = gw.client.post(
        "/v1/keys", json={"role": "client", "name": "a\u0000b"}, headers=gw.auth("admin")
    )
    assert r.status_code == 422
    names = [k["name"] for k in gw.client.get("/v1/keys", headers=gw.auth("admin")).json()]
    assert "a\u0000b" not in names


def test_nul_in_a_review_note_is_422(gw):
    r = gw.client.post(
        "/v1/reviews/" + "0" * 32 + "/approve",
        json={"note": "ok\u0000"},
        headers=gw.auth("reviewer"),
    )
    assert r.status_code == 422
