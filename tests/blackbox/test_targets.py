"""Query targets, the query counter and the budget."""

from __future__ import annotations

import builtins

import pytest
import torch

from bastion.attacks.blackbox import (
    REFUSED,
    CallableTarget,
    ModuleTarget,
    OnnxTarget,
    QueryBudget,
    QueryTarget,
    as_labels,
    hopskipjump,
    is_adversarial,
    refused,
    square_attack,
)
from bastion.errors import AttackError, QueryBudgetExceeded, TargetError


def test_module_target_counts_one_query_per_sample_and_batches(digits, digits_module):
    target = ModuleTarget(digits_module, batch_size=7)
    x = digits.test.x[:20]
    probs = target(x)
    assert probs.shape == (20, 10)
    assert torch.allclose(probs.sum(1), torch.ones(20), atol=1e-5)
    assert target.queries == 20 and target.num_classes == 10
    labels = ModuleTarget(digits_module, kind="labels")(x)
    assert labels.dtype == torch.long and torch.equal(labels, probs.argmax(1))
    assert isinstance(target, QueryTarget)


def test_module_target_answers_without_gradients(digits, digits_module):
    x = digits.test.x[:4].clone().requires_grad_(True)
    out = ModuleTarget(digits_module)(x)
    assert not out.requires_grad


def test_bad_kind_and_bad_query():
    with pytest.raises(AttackError, match="use 'scores' or 'labels'"):
        CallableTarget(lambda x: x, kind="logits")
    target = CallableTarget(lambda x: torch.softmax(x.flatten(1)[:, :3], 1))
    with pytest.raises(AttackError, match="floating-point tensor batch"):
        target(torch.zeros(3, dtype=torch.long))


def test_callable_target_checks_answers():
    target = CallableTarget(lambda x: torch.zeros(x.shape[0] + 1, 3), num_classes=3)
    with pytest.raises(TargetError, match="asked about 2 inputs but got 3"):
        target(torch.zeros(2, 1, 2, 2))
    target = CallableTarget(lambda x: torch.zeros(x.shape[0], dtype=torch.long))
    with pytest.raises(TargetError, match="labels only: use kind='labels'"):
        target(torch.zeros(2, 1, 2, 2))
    target = CallableTarget(lambda x: torch.full((x.shape[0], 4), 0.25), num_classes=3)
    with pytest.raises(TargetError, match="answered 4 class scores, expected 3"):
        target(torch.zeros(2, 1, 2, 2))


def test_refused_rows_and_labels():
    answer = torch.tensor([[0.2, 0.8], [float("nan"), float("nan")]])
    assert as_labels(answer).tolist() == [1, REFUSED]
    assert refused(answer).tolist() == [False, True]
    y = torch.tensor([0, 0])
    assert is_adversarial(answer, y).tolist() == [True, False]  # refused never counts


def test_query_budget_stops_exactly_at_the_budget(digits, digits_module):
    inner = ModuleTarget(digits_module)
    budget = QueryBudget(inner, 25)
    budget(digits.test.x[:20])
    assert budget.remaining == 5
    with pytest.raises(QueryBudgetExceeded, match="query budget of 25 reached"):
        budget(digits.test.x[:6])
    assert inner.queries == 20  # the refused call never reached the model
    budget(digits.test.x[:5])
    assert budget.queries == 25 and budget.remaining == 0
    with pytest.raises(AttackError, match="max_queries must be >= 0"):
        QueryBudget(inner, -1)


def test_attacks_stop_cleanly_at_a_global_budget(correct_batch, digits_module):
    x, y = correct_batch
    inner = ModuleTarget(digits_module)
    res = square_attack(QueryBudget(inner, 150), x, y, eps=0.05, max_queries=1000)
    assert res.exhausted and inner.queries <= 150
    assert (res.x_adv - x).abs().max() <= 0.05 + 1e-6
    inner = ModuleTarget(digits_module, kind="labels")
    res = hopskipjump(QueryBudget(inner, 500), x, y, max_queries=1000)
    assert res.exhausted and inner.queries <= 500
    fooled = digits_module(res.x_adv[res.success]).argmax(1) != y[res.success]
    assert fooled.all()  # whatever was kept is still adversarial


def _onnx_linear(path, weight: torch.Tensor, bias: torch.Tensor, batch: int | str = "N"):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    k = weight.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k])],
        initializer=[
            numpy_helper.from_array(weight.numpy(), "W"),
            numpy_helper.from_array(bias.numpy(), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_target_matches_torch(tmp_path, digits):
    pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(10, 64, generator=gen), torch.randn(10, generator=gen)
    path = _onnx_linear(tmp_path / "m.onnx", weight, bias)
    x = digits.test.x[:9]
    expected = torch.softmax(x.flatten(1) @ weight.T + bias, 1)
    target = OnnxTarget(path, batch_size=4)
    assert target.num_classes == 10
    assert torch.allclose(target(x), expected, atol=1e-5)
    assert target.queries == 9
    labels = OnnxTarget(path, kind="labels")(x)
    assert torch.equal(labels, expected.argmax(1))
    fixed = OnnxTarget(_onnx_linear(tmp_path / "f.onnx", weight, bias, batch=4))
    assert torch.allclose(fixed(x), expected, atol=1e-5)  # padded to the fixed batch of 4


def test_onnx_target_errors(tmp_path, monkeypatch):
    with pytest.raises(TargetError, match="ONNX model not found"):
        OnnxTarget(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(TargetError, match="onnxruntime cannot load it"):
        OnnxTarget(tmp_path / "bad.onnx")
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(TargetError, match=r"pip install 'bastion-ml\[onnx\]'"):
        OnnxTarget(tmp_path / "bad.onnx")
