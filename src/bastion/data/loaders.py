"""Dataset loaders. ``load_dataset(spec)`` accepts a registered name (``digits``,
``mnist``, ``fashion-mnist``), a ``.npz`` or ``.csv`` file, or a folder of IDX files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bastion.data.csv_table import read_csv_table
from bastion.data.dataset import DataBundle, Dataset
from bastion.data.idx import read_idx
from bastion.data.npz import read_npz
from bastion.data.spec import InputSpec
from bastion.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MAX_SIDE = 2**20  # one side of a sample shape given with --shape
FASHION_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
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
        if yi.ndim != 1 or yi.dtype.kind not in "iu":
            raise DataError(
                f"{folder}/{labels}: expected 1-D integer labels, got {yi.ndim}-D {yi.dtype}"
            )
        if len(xi) != len(yi) or not len(yi):
            raise DataError(
                f"{folder}: {images} holds {len(xi)} images but {labels} {len(yi)} labels"
                + (" (an empty split)" if not len(yi) else "")
            )
        x = torch.from_numpy(xi.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(yi.astype(np.int64))
        offset = len(splits["train"]) if split == "test" else 0
        splits[split] = Dataset(
            name,
            x,
            y,
            class_names,
            source=str(folder),
            split=split,
            rows=offset + torch.arange(len(y)),
        )
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
        raise DataError(
            "MNIST needs --data-root: a folder with the four IDX files from "
            "http://yann.lecun.com/exdb/mnist/ (raw or .gz)"
        )
    return load_idx_folder(
        root,
        name="mnist",
        class_names=DIGIT_CLASSES,
        provider="download the four MNIST IDX files into that folder",
    )


class DataOptions(BaseModel):
    """How to read a user's array or CSV file (every field has a documented default).

    - ``modality``: ``auto`` reads 2-D arrays as tabular rows, 3-D as greyscale images
      (N, H, W) and 4-D as images; ``image``/``tabular`` force it (``shape`` reshapes flat
      rows into images, e.g. ``[1, 8, 8]``).
    - ``layout``: 4-D images are NCHW or NHWC; ``auto`` decides when only one of the two
      readings has 1, 3 or 4 channels, and refuses when both do.
    - ``scale``: divide every value by this (e.g. 255 for 8-bit pixels). Never applied unless
      asked: an image format (IDX, the bundled sets) defines its own.
    - ``lower``/``upper``: bounds, one value for all features or one per feature. Default:
      images in [0, 1] (or [0, 255] for uint8 arrays), tabular the training rows' per-feature
      min/max, widened to cover the test rows.
    - ``integer``: ``auto`` (tabular columns whose values are all whole numbers), ``none``, or
      flat feature indices; ``frozen``: feature indices an attacker cannot change.
    - ``label_column`` (CSV): a header name or a 0-based index; default a column named
      label/target/class/y, else the first.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    modality: Literal["auto", "image", "tabular"] = "auto"
    shape: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] | None = Field(
        None, min_length=1, max_length=3
    )
    layout: Literal["auto", "NCHW", "NHWC"] = "auto"
    scale: float | None = Field(None, gt=0)
    lower: list[float] | None = None
    upper: list[float] | None = None
    integer: Literal["auto", "none"] | list[int] = "auto"
    frozen: list[int] = Field(default_factory=list)
    label_column: str | int | None = None


MAX_CLASSES = 100_000  # labels at or above this are not class indices (ImageNet-21k: 21 841)


def _first_error(exc: ValueError) -> str:
    """One line from a (pydantic) validation error."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc).splitlines()[0]


CHANNELS = (1, 3, 4)


def _to_nchw(t: torch.Tensor, layout: str, source: str) -> tuple[torch.Tensor, str]:
    # A reading is plausible when its channel axis has 1, 3 or 4 entries and the image is at
    # least that tall and wide: (N, 1, 4, 4) is NCHW, (N, 32, 32, 3) NHWC, (N, 4, 4, 4) either.
    first = t.shape[1] in CHANNELS and min(t.shape[2], t.shape[3]) >= t.shape[1]
    last = t.shape[3] in CHANNELS and min(t.shape[1], t.shape[2]) >= t.shape[3]
    if layout == "auto":
        if first and last:
            raise DataError(
                f"{source}: images of shape {tuple(t.shape)} could be NCHW or NHWC: "
                "say which with --layout NCHW or --layout NHWC"
            )
        if not first and not last:
            raise DataError(
                f"{source}: images of shape {tuple(t.shape)} have no 1, 3 or 4 channel axis: "
                "pass --layout NCHW or NHWC"
            )
        layout = "NCHW" if first else "NHWC"
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2).contiguous()
    return t, layout


def _features(x: np.ndarray, opts: DataOptions, source: str) -> tuple[torch.Tensor, str, str]:
    """(tensor, modality, source layout) with no rescaling beyond ``opts.scale``."""
    if x.dtype.kind not in "iuf":
        raise DataError(f"{source}: x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{source}: x must be (N, features) or images, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{source}: x holds no samples (shape {tuple(x.shape)})")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{source}: the samples hold no values (shape {tuple(x.shape)})")
    with np.errstate(over="ignore", invalid="ignore"):
        as32 = np.asarray(x, dtype=np.float32)
    if x.dtype.kind == "f" and np.isfinite(x).all() and not np.isfinite(as32).all():
        raise DataError(
            f"{source}: values up to {float(np.abs(x).max()):.3g} do not fit in float32: "
            "rescale the data (e.g. --scale)"
        )
    t = torch.as_tensor(as32)
    if opts.scale is not None:
        t = t / float(opts.scale)
    modality = opts.modality
    if modality == "auto":
        modality = "tabular" if t.ndim == 2 else "image"
    if modality == "tabular":
        return t.reshape(t.shape[0], -1), "tabular", "flat"
    if opts.shape is not None:
        if int(np.prod(opts.shape)) != t[0].numel():
            raise DataError(
                f"{source}: cannot reshape samples of {t[0].numel()} values to {opts.shape}"
            )
        t = t.reshape(t.shape[0], *opts.shape)
        if t.ndim == 3:
            t = t.unsqueeze(1)
        return t, "image", "NCHW"
    if t.ndim == 2:
        raise DataError(f"{source}: flat rows read as images need --shape C,H,W")
    if t.ndim == 3:
        return t.unsqueeze(1), "image", "NCHW"
    if t.ndim != 4:
        raise DataError(f"{source}: images must be (N, H, W) or 4-D, got shape {tuple(t.shape)}")
    t, layout = _to_nchw(t, opts.layout, source)
    return t, "image", layout


def _as_labels(y: np.ndarray, source: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one-dimensional, got shape {y.shape}")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{source}: y must hold integer class labels")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, found {int(y.min())}")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(
            f"{source}: label {float(y.max()):.6g} is not a class index (labels are 0 … "
            f"{MAX_CLASSES - 1}): check the label column"
        )
    return torch.as_tensor(y.astype(np.int64))


def _spec(
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    modality: str,
    layout: str,
    opts: DataOptions,
    raw_dtype: np.dtype,
    feature_names: list[str] | None,
) -> InputSpec:
    train = tensors.get("train", tensors.get("all"))[0]
    every = torch.cat([x for x, _ in tensors.values()])
    if modality == "image":
        if opts.lower is not None or opts.upper is not None:
            lo = opts.lower or [float(every.min())]
            hi = opts.upper or [float(every.max())]
            return InputSpec(
                modality="image",
                shape=list(train.shape[1:]),
                source_layout=layout,
                lower=lo,
                upper=hi,
                bounds_source="given",
                frozen=opts.frozen,
            )
        top = 255.0 if raw_dtype == np.uint8 and opts.scale is None else 1.0
        return InputSpec(
            modality="image",
            shape=list(train.shape[1:]),
            source_layout=layout,
            lower=[0.0],
            upper=[top],
            bounds_source=f"image range [0, {top:g}]",
            frozen=opts.frozen,
        )
    d = train.shape[1]
    lo, hi = opts.lower, opts.upper
    source = "given"
    if lo is None or hi is None:
        t_lo, t_hi = train.amin(0), train.amax(0)
        e_lo, e_hi = every.amin(0), every.amax(0)
        widened = bool((e_lo < t_lo).any() or (e_hi > t_hi).any())
        lo = lo if lo is not None else e_lo.tolist()
        hi = hi if hi is not None else e_hi.tolist()
        source = "train-min-max" + (" widened to cover the test rows" if widened else "")
    lo = lo * d if len(lo) == 1 else lo
    hi = hi * d if len(hi) == 1 else hi
    if opts.integer == "auto":
        whole = (every == every.round()).all(0)
        integer = [int(i) for i in whole.nonzero().flatten()]
    elif opts.integer == "none":
        integer = []
    else:
        integer = list(opts.integer)
    return InputSpec(
        modality="tabular",
        shape=[d],
        source_layout="flat",
        lower=lo,
        upper=hi,
        integer=sorted(integer),
        frozen=sorted(opts.frozen),
        feature_names=feature_names,
        bounds_source=source,
    )


def bundle_from_arrays(
    name: str,
    source: str,
    arrays: dict[str, np.ndarray],
    seed: int,
    opts: DataOptions | None = None,
    feature_names: list[str] | None = None,
) -> DataBundle:
    opts = opts or DataOptions()
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        parts = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")}
    elif {"x", "y"} <= arrays.keys():
        parts = {"all": (arrays["x"], arrays["y"])}
    else:
        raise DataError(
            f"{source}: expected arrays x and y (or x_train, y_train, x_test, y_test), "
            f"found {sorted(arrays)}"
        )
    tensors, modality, layout = {}, "tabular", "flat"
    for s, (x, y) in parts.items():
        xt, modality, layout = _features(x, opts, source)
        tensors[s] = (xt, _as_labels(y, source))
    for x, y in tensors.values():
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{source}: {x.shape[0]} samples but {y.shape[0]} labels (x/y length mismatch)"
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())
            raise DataError(f"{source}: {bad} sample(s) contain NaN or Inf values")
    if "all" in tensors and len(tensors["all"][1]) < 2:
        raise DataError(f"{source}: need at least 2 samples to split into train and test")
    shapes = {tuple(x.shape[1:]) for x, _ in tensors.values()}
    if len(shapes) > 1:
        raise DataError(f"{source}: the splits have different sample shapes {sorted(shapes)}")
    raw_dtype = parts[next(iter(parts))][0].dtype
    try:
        spec = _spec(tensors, modality, layout, opts, raw_dtype, feature_names)
    except ValueError as exc:  # the spec's own validation (bounds, indices, names)
        raise DataError(f"invalid input spec: {_first_error(exc)}") from None
    num_classes = int(max(int(y.max()) for _, y in tensors.values()) + 1)
    if "class_names" in arrays:
        given = np.asarray(arrays["class_names"])
        if given.ndim != 1 or given.dtype.kind not in "iufUS":
            raise DataError(
                f"{source}: class_names must be a 1-D array of names, got {given.ndim}-D "
                f"{given.dtype}"
            )
        names = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in given]
    else:
        names = [str(i) for i in range(max(num_classes, 2))]
    if "all" in tensors:
        x, y = tensors["all"]
        full = Dataset(name, x, y, names, source=source, spec=spec)
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        cut = max(1, int(0.8 * len(full)))
        return DataBundle(full.subset(perm[:cut], "train"), full.subset(perm[cut:], "test"))
    n_train = len(tensors["train"][1])
    offsets = {"train": 0, "test": n_train}
    return DataBundle(
        *(
            Dataset(
                name,
                *tensors[s],
                names,
                source=source,
                split=s,
                spec=spec,
                rows=offsets[s] + torch.arange(len(tensors[s][1])),
            )
            for s in ("train", "test")
        )
    )


def load_npz(path: str | Path, *, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """A ``.npz`` with ``x``, ``y`` (split 80/20, seeded) or ``x_train``… ``y_test``;
    optional ``class_names``. Values are read as they are (see :class:`DataOptions`)."""
    path = Path(path)
    arrays = read_npz(path)
    return bundle_from_arrays(path.stem, str(path), arrays, seed, options)


def load_csv(path: str | Path, *, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """A numeric CSV, with or without a header row (see :func:`bastion.data.csv_table.read_csv_table`:
    the label column is ``options.label_column``, else one named label/target/class/y, else
    the first; every other column is a feature)."""
    path = Path(path)
    opts = options or DataOptions()
    table = read_csv_table(path, opts.label_column)
    arrays = {"x": table.x, "y": table.y}
    return bundle_from_arrays(path.stem, str(path), arrays, seed, opts, table.feature_names)


_NAMED: dict[str, Callable[..., DataBundle]] = {
    "digits": lambda root=None, seed=0: load_digits(seed=seed),
    "fashion-mnist": lambda root=None, seed=0: load_fashion_mnist(root),
    "mnist": lambda root=None, seed=0: load_mnist(root),
}
DATASET_NAMES = sorted(_NAMED)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long to be a path, say
        return False


def load_dataset(
    spec: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    options: DataOptions | None = None,
) -> DataBundle:
    """Load a dataset by name or path: ``digits`` | ``fashion-mnist`` | ``mnist`` |
    ``file.npz`` | ``file.csv`` | a folder of IDX files. ``options`` (:class:`DataOptions`)
    say how to read a user's .npz or CSV."""
    key = spec.lower().replace("_", "-")
    if key in _NAMED:
        return _NAMED[key](root=root, seed=seed)
    path = Path(spec)
    if path.suffix == ".npz":
        return load_npz(path, seed=seed, options=options)
    if path.suffix == ".csv":
        return load_csv(path, seed=seed, options=options)
    if _is_dir(path):
        return load_idx_folder(
            path,
            name=path.name,
            class_names=DIGIT_CLASSES,
            provider="expected the four MNIST-style IDX files",
        )
    raise DataError(
        f"unknown dataset {spec!r}: use one of {', '.join(DATASET_NAMES)}, "
        "a .npz or .csv file, or a folder of IDX files"
    )
