"""Benign files of the scan corpus: what users really download and save.

Torch state dicts of several architectures and dtypes, checkpoints with metadata, plain
tensors, full ``nn.Module`` pickles (kind ``full-module``), safetensors, numeric NumPy,
scikit-learn pickles and joblib files, ONNX, XGBoost JSON, LightGBM text, skops,
TorchScript and a GGUF with an ordinary chat template. Everything is tiny and seeded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benign:
    path: Path
    technique: str
    format: str
    loader: str
    kind: str


def _torch_items(out: Path) -> list[Benign]:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    items: list[Benign] = []
    tl = "torch.load(weights_only=True)"

    def save(name: str, obj: object, kind: str = "tensors", **kw: object) -> None:
        path = out / name
        torch.save(obj, path, **kw)
        fmt = "torch-legacy" if kw.get("_use_new_zipfile_serialization") is False else "torch-zip"
        items.append(Benign(path, f"torch:{Path(name).stem}", fmt, tl, kind))

    class WithBuffers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.register_buffer("positions", torch.arange(8, dtype=torch.int64))
            self.register_buffer("mask", torch.ones(8, dtype=torch.bool))

    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    cnn_bn = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )
    lstm = nn.LSTM(4, 8, num_layers=1, batch_first=True)
    enc = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    save("mlp_state_dict.pt", mlp.state_dict())
    save("cnn_state_dict.pth", cnn.state_dict())
    save("cnn_batchnorm_state_dict.pt", cnn_bn.state_dict())
    save("int64_bool_buffers_state_dict.pt", WithBuffers().state_dict())
    save("mlp_fp16_state_dict.pt", mlp.half().state_dict())
    save("cnn_bf16_state_dict.pt", cnn.to(torch.bfloat16).state_dict())
    save("lstm_state_dict.bin", lstm.state_dict())
    save("transformer_layer_state_dict.pt", enc.state_dict())
    save("mlp_legacy_format.pt", mlp.float().state_dict(), _use_new_zipfile_serialization=False)
    save("tensor.pt", torch.randn(4, 4))
    save(
        "tensor_list.pt", [torch.randn(3), torch.arange(5), torch.zeros(2, 2, dtype=torch.float16)]
    )
    opt = torch.optim.Adam(mlp.float().parameters(), lr=1e-3)
    mlp(torch.randn(2, 8)).sum().backward()
    opt.step()
    save(
        "checkpoint_with_metadata.pt",
        {
            "state_dict": mlp.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 12,
            "best_acc": 0.913,
            "arch": "mlp-8-16-3",
            "classes": ["cat", "dog", "bird"],
        },
    )
    save("full_linear.pt", nn.Linear(4, 2), kind="full-module")
    save("full_cnn_batchnorm.pt", cnn_bn, kind="full-module")
    save("full_lstm.pt", lstm, kind="full-module")

    for name, sd in (
        ("mlp.safetensors", mlp.float().state_dict()),
        ("cnn_fp16.safetensors", {k: v.half() for k, v in cnn.float().state_dict().items()}),
        ("buffers.safetensors", WithBuffers().state_dict()),
    ):
        path = out / name
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        items.append(
            Benign(path, f"safetensors:{path.stem}", "safetensors", "safetensors", "tensors")
        )

    script = out / "mlp_torchscript.pt"
    torch.jit.save(torch.jit.script(mlp.float()), str(script))
    items.append(Benign(script, "torchscript:mlp", "torchscript", "torch.jit.load", "other"))
    onnx = out / "mlp.onnx"
    try:
        torch.onnx.export(mlp.float(), (torch.randn(1, 8),), str(onnx), dynamo=False)
        items.append(Benign(onnx, "onnx:mlp-export", "onnx", "onnxruntime", "other"))
    except Exception:  # the exporter needs optional packages in some torch builds
        onnx.unlink(missing_ok=True)
    return items


def _numpy_items(out: Path) -> list[Benign]:
    import numpy as np

    rng = np.random.default_rng(0)
    items = []
    nl = "numpy.load"
    np.save(out / "float32.npy", rng.normal(size=(16, 8)).astype(np.float32))
    np.save(out / "int64.npy", np.arange(100, dtype=np.int64))
    np.savez(out / "arrays.npz", x=rng.normal(size=(8, 4)), y=np.arange(8))
    np.savez_compressed(out / "arrays_compressed.npz", w=rng.normal(size=(32, 32)))
    for name in ("float32.npy", "int64.npy"):
        items.append(Benign(out / name, f"numpy:{name}", "npy", nl, "tensors"))
    for name in ("arrays.npz", "arrays_compressed.npz"):
        items.append(Benign(out / name, f"numpy:{name}", "npz", nl, "tensors"))
    return items


def _sklearn_items(out: Path) -> list[Benign]:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    models = {
        "logreg": LogisticRegression().fit(x, y),
        "forest": RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y),
        "pipeline": Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(
            x, y
        ),
    }
    items = []
    for name, model in models.items():
        path = out / f"sklearn_{name}.pkl"
        path.write_bytes(pickle.dumps(model, protocol=5))
        items.append(Benign(path, f"sklearn-pickle:{name}", "pickle", "pickle.load", "sklearn"))
        path = out / f"sklearn_{name}.joblib"
        joblib.dump(model, path, compress=3 if name == "forest" else 0)
        items.append(Benign(path, f"sklearn-joblib:{name}", "joblib", "joblib.load", "sklearn"))
    try:
        import skops.io as sio

        path = out / "sklearn_logreg.skops"
        sio.dump(models["logreg"], path)
        items.append(Benign(path, "skops:logreg", "skops", "skops.io.load", "other"))
    except ImportError:
        pass
    try:
        import xgboost as xgb

        booster = xgb.train(
            {"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, label=y), 3
        )
        path = out / "xgboost.json"
        booster.save_model(str(path))
        items.append(Benign(path, "xgboost:json", "xgboost-json", "xgboost", "other"))
    except ImportError:
        pass
    try:
        import lightgbm as lgb

        gbm = lgb.train(
            {"objective": "binary", "verbose": -1, "num_leaves": 4},
            lgb.Dataset(x, label=y),
            num_boost_round=3,
        )
        path = out / "lightgbm.txt"
        gbm.save_model(str(path))
        items.append(Benign(path, "lightgbm:txt", "lightgbm", "lightgbm", "other"))
    except ImportError:
        pass
    return items


CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def build_benign(out: Path) -> list[Benign]:
    from tests.scan.corpus_formats import gguf

    out.mkdir(parents=True, exist_ok=True)
    items = _torch_items(out) + _numpy_items(out) + _sklearn_items(out)
    path = out / "chat.gguf"
    path.write_bytes(gguf(CHAT_TEMPLATE))
    items.append(Benign(path, "gguf:chat-template", "gguf", "jinja2 render", "other"))
    return items
