"""Dataset loaders. ``load_dataset(spec)`` accepts a registered name (``digits``,
``mnist``, ``fashion-mnist``), a ``.npz`` or ``.csv`` file, or a folder of IDX files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bastion.data.dataset import DataBundle, Dataset
from bastion.data.idx import read_idx
from bastion.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
DIGIT_CLASSES = [str(i) for i in range(10)]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> DataBundle:
    """scikit-learn's 8×8 digits (1 797 images, shipped with scikit-learn), scaled to [0, 1]
    and split into train/test with a fixed, stratified shuffle."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    raw = sk_digits()
    x = torch.tensor(raw.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(raw.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=raw.target
    )
    full = Dataset("digits", x, y, DIGIT_CLASSES, source="sklearn.datasets.load_digits")
    return DataBundle(
        train=full.subset(torch.as_tensor(idx_train), split="train"),
        test=full.subset(torch.as_tensor(idx_test), split="test"),
    )


def _find_idx(folder: Path, stem: str, provider: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"missing {stem}[.gz] in {folder}: {provider}")


def load_idx_folder(
    folder: str | Path, *, name: str, class_names: list[str], provider: str
) -> DataBundle:
    """Read the four MNIST-style IDX files (raw or .gz) from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}: {provider}")
    splits = {}
    for split, (images, labels) in IDX_FILES.items():
        xi = read_idx(_find_idx(folder, images, provider))
        yi = read_idx(_find_idx(folder, labels, provider))
        if xi.ndim != 3:
            raise DataError(f"{folder}/{images}: expected 3-D image data, got {xi.ndim}-D")
        x = torch.from_numpy(xi.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(yi.astype(np.int64))
        splits[split] = Dataset(name, x, y, class_names, source=str(folder), split=split)
    return DataBundle(**splits)


def load_fashion_mnist(root: str | Path | None = None) -> DataBundle:
    return load_idx_folder(
        root or FASHION_MNIST_DIR,
        name="fashion-mnist",
        class_names=FASHION_CLASSES,
        provider="install the Debian package `dataset-fashion-mnist` "
        "(apt-get install dataset-fashion-mnist) or pass --data-root",
    )


def load_mnist(root: str | Path | None = None) -> DataBundle:
    if root is None:
        raise DataError("MNIST needs --data-root: a folder with the four IDX files from "
                        "http://yann.lecun.com/exdb/mnist/ (raw or .gz)")  # fmt: skip
    return load_idx_folder(
        root, name="mnist", class_names=DIGIT_CLASSES,
        provider="download the four MNIST IDX files into that folder",
    )  # fmt: skip


def _as_images(x: np.ndarray, source: str) -> torch.Tensor:
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source}: x must be numeric, got dtype {x.dtype}")
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if t.ndim == 2:  # flat vectors: square greyscale images if possible, else 1×1×D
        side = int(round(t.shape[1] ** 0.5))
        t = (
            t.reshape(-1, 1, side, side)
            if side * side == t.shape[1]
            else t.reshape(-1, 1, 1, t.shape[1])
        )
    elif t.ndim == 3:
        t = t.unsqueeze(1)
    if (
        torch.isfinite(t).all()
        and t.numel()
        and t.max() > 1.0
        and t.max() <= 255.0
        and t.min() >= 0
    ):
        t = t / 255.0
    return t


def _as_labels(y: np.ndarray, source: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one-dimensional, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or (
        np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0)
    ):
        raise DataError(f"{source}: y must hold integer class labels")
    return torch.as_tensor(y.astype(np.int64))


def _bundle_from_arrays(
    name: str, source: str, arrays: dict[str, np.ndarray], seed: int
) -> DataBundle:
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        parts = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")}
    elif {"x", "y"} <= arrays.keys():
        parts = {"all": (arrays["x"], arrays["y"])}
    else:
        raise DataError(
            f"{source}: expected arrays x and y (or x_train, y_train, x_test, y_test), "
            f"found {sorted(arrays)}"
        )
    tensors = {s: (_as_images(x, source), _as_labels(y, source)) for s, (x, y) in parts.items()}
    for x, y in tensors.values():
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{source}: {x.shape[0]} images but {y.shape[0]} labels (x/y length mismatch)"
            )
    num_classes = int(max(int(y.max()) for _, y in tensors.values()) + 1)
    if "class_names" in arrays:
        names = [str(c) for c in arrays["class_names"]]
    else:
        names = [str(i) for i in range(max(num_classes, 2))]
    if "all" in tensors:
        x, y = tensors["all"]
        full = Dataset(name, x, y, names, source=source)
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        cut = max(1, int(0.8 * len(full)))
        return DataBundle(full.subset(perm[:cut], "train"), full.subset(perm[cut:], "test"))
    return DataBundle(
        *(Dataset(name, *tensors[s], names, source=source, split=s) for s in ("train", "test"))
    )


def load_npz(path: str | Path, *, seed: int = 0) -> DataBundle:
    """A ``.npz`` with ``x``, ``y`` (split 80/20, seeded) or ``x_train``… ``y_test``;
    optional ``class_names``. Pixels in [0, 255] are scaled to [0, 1]."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {path}") from None
    except ValueError as exc:
        raise DataError(f"{path}: refusing to load pickled objects from .npz ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    return _bundle_from_arrays(path.stem, str(path), arrays, seed)


def load_csv(path: str | Path, *, seed: int = 0) -> DataBundle:
    """A CSV whose first column is the integer label and the rest the features."""
    path = Path(path)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {path}") from None
    except ValueError:
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, skiprows=1)
        except ValueError as exc:
            raise DataError(f"{path}: not a numeric CSV (label, features...): {exc}") from None
    if table.shape[1] < 2:
        raise DataError(f"{path}: need a label column and at least one feature column")
    return _bundle_from_arrays(path.stem, str(path), {"x": table[:, 1:], "y": table[:, 0]}, seed)


_NAMED: dict[str, Callable[..., DataBundle]] = {
    "digits": lambda root=None, seed=0: load_digits(seed=seed),
    "fashion-mnist": lambda root=None, seed=0: load_fashion_mnist(root),
    "mnist": lambda root=None, seed=0: load_mnist(root),
}
DATASET_NAMES = sorted(_NAMED)


def load_dataset(spec: str, *, root: str | Path | None = None, seed: int = 0) -> DataBundle:
    """Load a dataset by name or path: ``digits`` | ``fashion-mnist`` | ``mnist`` |
    ``file.npz`` | ``file.csv`` | a folder of IDX files."""
    key = spec.lower().replace("_", "-")
    if key in _NAMED:
        return _NAMED[key](root=root, seed=seed)
    path = Path(spec)
    if path.suffix == ".npz":
        return load_npz(path, seed=seed)
    if path.suffix == ".csv":
        return load_csv(path, seed=seed)
    if path.is_dir():
        return load_idx_folder(path, name=path.name, class_names=DIGIT_CLASSES,
                               provider="expected the four MNIST-style IDX files")  # fmt: skip
    raise DataError(
        f"unknown dataset {spec!r}: use one of {', '.join(DATASET_NAMES)}, "
        "a .npz or .csv file, or a folder of IDX files"
    )
