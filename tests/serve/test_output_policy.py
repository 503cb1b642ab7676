"""The gateway's output policy: answers reveal all scores, the top k, or labels only, and a
black-box attacker behind it gets only that (a labels-only answer is no score target)."""

from __future__ import annotations

import pytest
import torch

from bastion.errors import TargetError
from bastion.serve.output import OutputPolicy, police


def test_police_each_mode():
    p = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert torch.equal(torch.tensor(police(p, OutputPolicy()).probabilities), p)
    top = police(p, OutputPolicy(mode="top-k", k=2)).top_k
    assert [[(s.label, round(s.score, 3)) for s in row] for row in top] == [
        [(1, 0.6), (2, 0.3)],
        [(0, 0.5), (2, 0.3)],
    ]
    assert police(p, OutputPolicy(mode="labels")).model_dump(exclude_none=True) == {}
    rounded = police(torch.tensor([[0.123456, 0.876544]]), OutputPolicy(round=2)).probabilities
    assert rounded[0] == pytest.approx([0.12, 0.88])
    assert police(p, OutputPolicy(mode="top-k", k=9)).top_k[0][0].label == 1  # k capped at K


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="mode"):
        OutputPolicy(mode="logits")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        OutputPolicy(mode="top-k", k=0)


def _settings(settings, **output):
    return settings.model_copy(update={"output": OutputPolicy(**output)})


@pytest.mark.parametrize(
    ("output", "keys"),
    [
        ({}, {"predictions", "probabilities", "verdicts", "request_id"}),
        ({"mode": "top-k", "k": 3}, {"predictions", "top_k", "verdicts", "request_id"}),
        ({"mode": "labels"}, {"predictions", "verdicts", "request_id"}),
    ],
)
def test_predict_answers_only_what_the_policy_allows(
    settings, gateway_factory, sample, output, keys
):
    with gateway_factory(_settings(settings, **output)) as gw:
        r = gw.client.post("/v1/predict", json={"inputs": [sample, sample]}, headers=gw.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == keys
    if "top_k" in body:
        assert [len(row) for row in body["top_k"]] == [3, 3]
        assert body["top_k"][0][0]["label"] == body["predictions"][0]


def test_a_score_attacker_gets_nothing_from_a_labels_only_gateway(
    settings, gateway_factory, digits
):
    from bastion.attacks.http_target import HttpTarget

    with gateway_factory(_settings(settings, mode="labels")) as gw:
        key = gw.keys["client"]
        scores = HttpTarget(
            "http://testserver/v1/predict", api_key=key, client=gw.client, num_classes=10
        )  # a score-based attacker
        with pytest.raises(TargetError, match="no 'probabilities'"):
            scores(digits.test.x[:2])
        labels = HttpTarget(
            "http://testserver/v1/predict",
            kind="labels",
            api_key=key,
            client=gw.client,
            num_classes=10,
        )
        assert labels(digits.test.x[:2]).shape == (2,)
