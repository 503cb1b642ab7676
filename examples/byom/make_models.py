"""Make the "bring your own model" example files in the current directory, the way a user
would have them: raw breast-cancer data as a CSV (label first), a torch MLP trained on it
(`bc.pt`, a plain state dict for `tabular_net:build`), its ONNX export (`bc.onnx`), and a
scikit-learn gradient-boosting model in skops format (`gb.skops`). `members.txt` lists the
rows the models were trained on (indices into the CSV, for membership inference).

    cd examples/byom && python make_models.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from tabular_net import build
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    rows = [",".join([str(int(t)), *(f"{v:.6g}" for v in r)]) for r, t in zip(x, y, strict=True)]
    header = ",".join(["label", *(n.replace(" ", "_") for n in raw.feature_names)])
    with open("bc.csv", "w") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
    # the rows this "user" trained on: a seeded 80 % of the file
    perm = np.random.default_rng(0).permutation(len(y))
    train = np.sort(perm[: int(0.8 * len(y))])
    np.savetxt("members.txt", train, fmt="%d")
    model = build()
    xt, yt = torch.tensor(x[train]), torch.tensor(y[train])
    std = model[0]
    std.mean.copy_(xt.mean(0))
    std.std.copy_(xt.std(0) + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), "bc.pt")
    torch.onnx.export(
        model,
        (xt[:2],),
        "bc.onnx",
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    import skops.io as sio

    gb = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(x[train], y[train])
    sio.dump(gb, "gb.skops")
    print("wrote bc.csv, members.txt, bc.pt, bc.onnx, gb.skops")


if __name__ == "__main__":
    main()
