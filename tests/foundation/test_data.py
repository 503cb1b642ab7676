import gzip
import struct

import numpy as np
import pytest
import torch

from bastion.data import load_dataset
from bastion.data.dataset import Dataset
from bastion.data.idx import read_idx
from bastion.data.loaders import DataOptions, load_fashion_mnist, load_idx_folder
from bastion.data.spec import image_spec, tabular_spec_from
from bastion.errors import DataError


def write_idx(path, array: np.ndarray, *, gz: bool = False, magic_type: int = 0x08) -> None:
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_folder(folder, n=20, gz=True):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        ext = ".gz" if gz else ""
        write_idx(
            folder / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (count, 28, 28)), gz=gz
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, (count,)), gz=gz)


def test_digits_is_default_and_in_bounds(digits):
    assert digits.train.shape == (1, 8, 8)
    assert len(digits.train) + len(digits.test) == 1797
    assert float(digits.train.x.min()) >= 0.0 and float(digits.train.x.max()) <= 1.0
    assert digits.train.class_names == [str(i) for i in range(10)]


def test_manifest_has_provenance(digits):
    m = digits.test.manifest()
    assert len(m.sha256) == 64 and m.n == len(digits.test) and m.shape == [1, 8, 8]
    assert sum(m.class_counts.values()) == m.n
    assert m.source.startswith("sklearn")
    # same content → same hash; a changed pixel → another hash
    assert load_dataset("digits").test.sha256() == m.sha256
    x = digits.test.x.clone()
    x[0, 0, 0, 0] = 0.5 if x[0, 0, 0, 0] != 0.5 else 0.25
    assert Dataset("digits", x, digits.test.y, digits.test.class_names).sha256() != m.sha256


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_raw_and_gz(tmp_path, gz):
    make_idx_folder(tmp_path, gz=gz)
    b = load_idx_folder(tmp_path, name="t", class_names=[str(i) for i in range(10)], provider="x")
    assert b.train.x.shape == (20, 1, 28, 28) and b.test.x.shape == (10, 1, 28, 28)
    assert float(b.train.x.max()) <= 1.0


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 10)
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(p)


def test_idx_truncated(tmp_path):
    p = tmp_path / "t"
    write_idx(p, np.zeros((4, 5, 5)))
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(p)


def test_idx_corrupt_gzip(tmp_path):
    p = tmp_path / "t.gz"
    write_idx(p, np.zeros((4, 5, 5)), gz=True)
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(p)


def test_missing_fashion_names_the_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_missing_idx_file_names_provider(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset(str(tmp_path))


def test_npz_roundtrip_and_split(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.random((50, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 50))
    b = load_dataset(str(p))
    assert len(b.train) == 40 and len(b.test) == 10 and b.train.shape == (1, 4, 4)


def test_npz_uint8_images_keep_their_units_unless_scaled(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.full((10, 6, 6), 255, np.uint8), y=np.arange(10) % 2)
    raw = load_dataset(str(p)).train
    assert float(raw.x.max()) == 255.0 and raw.spec.scalar_bounds() == (0.0, 255.0)
    scaled = load_dataset(str(p), options=DataOptions(scale=255)).train
    assert float(scaled.x.max()) == 1.0 and scaled.spec.scalar_bounds() == (0.0, 1.0)


def test_tabular_values_up_to_255_are_never_rescaled(tmp_path):
    """The iris bug: a CSV whose largest value lies in (1, 255] was divided by 255."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    p = tmp_path / "iris.csv"
    rows = [
        f"{t}," + ",".join(f"{v:g}" for v in r) for r, t in zip(iris.data, iris.target, strict=True)
    ]
    p.write_text("\n".join(rows))
    b = load_dataset(str(p))
    assert b.train.modality == "tabular" and b.train.shape == (4,)
    both = torch.cat([b.train.x, b.test.x])
    assert torch.allclose(both.max(0).values, torch.tensor(iris.data.max(0), dtype=torch.float32))
    spec = b.train.spec
    assert spec.bounds_source.startswith("train-min-max")
    assert spec.lower == pytest.approx(iris.data.min(0).tolist())
    assert spec.upper == pytest.approx(iris.data.max(0).tolist())


def test_nhwc_images_are_converted_and_ambiguous_ones_refused(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.npz"
    x = rng.random((12, 32, 32, 3)).astype(np.float32)
    np.savez(p, x=x, y=np.arange(12) % 3)
    b = load_dataset(str(p))
    assert b.train.shape == (3, 32, 32) and b.train.spec.source_layout == "NHWC"
    first = b.train.x[0]
    assert any(torch.equal(first, torch.from_numpy(x[i]).permute(2, 0, 1)) for i in range(12))
    q = tmp_path / "cube.npz"
    np.savez(q, x=rng.random((6, 4, 4, 4)).astype(np.float32), y=np.arange(6) % 2)
    with pytest.raises(DataError, match="could be NCHW or NHWC"):
        load_dataset(str(q))
    assert load_dataset(str(q), options=DataOptions(layout="NHWC")).train.shape == (4, 4, 4)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.full((4, 2, 2), np.nan), np.zeros(4), "NaN or Inf"),
        (np.zeros((4, 2, 2)), np.zeros(3), "length mismatch"),
        (np.zeros((4, 2, 2)), np.array([0, 1, -1, 0]), r"labels must be >= 0"),
        (np.zeros((4, 2, 2)), np.array([0.5, 1, 1, 0]), "integer class labels"),
        (np.full((4, 2, 2), -3.0), np.array([0, 1, 1, 0]), r"outside \[0, 1\]"),
    ],
)
def test_bad_arrays(tmp_path, x, y, match):
    p = tmp_path / "bad.npz"
    np.savez(p, x=x, y=y)
    with pytest.raises(DataError, match=match):
        load_dataset(str(p))


def test_npz_missing_keys(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, images=np.zeros((3, 2, 2)))
    with pytest.raises(DataError, match="expected arrays x and y"):
        load_dataset(str(p))


def test_csv_loader(tmp_path):
    p = tmp_path / "d.csv"
    rows = [f"{i % 2}," + ",".join(str((i * j) % 7 / 7) for j in range(4)) for i in range(20)]
    p.write_text("a,b,label,c,d\n" + "\n".join(f"{r[2:]},{r[0]}" for r in rows))
    b = load_dataset(str(p), options=DataOptions(label_column=-1))
    assert b.train.shape == (4,) and b.train.num_classes == 2
    assert b.train.spec.feature_names == ["a", "b", "label", "c"]
    p.write_text("label,a,b,c,d\n" + "\n".join(rows))
    assert load_dataset(str(p)).train.spec.feature_names == ["a", "b", "c", "d"]


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_dataset_validates_shape_against_its_spec():
    spec = image_spec((1, 2, 2))
    with pytest.raises(DataError, match=r"the input spec says \(1, 2, 2\)"):
        Dataset("s", torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), ["a", "b"], spec=spec)


def test_csv_label_column_by_name_and_bad_name(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("f1,f2,outcome\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,10,1\n")
    b = load_dataset(str(p), options=DataOptions(label_column="outcome"))
    assert b.train.spec.feature_names == ["f1", "f2"] and b.train.spec.integer == [0, 1]
    with pytest.raises(DataError, match="no column named 'nope'"):
        load_dataset(str(p), options=DataOptions(label_column="nope"))


def test_per_feature_bounds_are_checked():
    spec = tabular_spec_from(torch.tensor([[0.0, 10.0], [1.0, 20.0]]))
    with pytest.raises(DataError, match="feature 1"):
        Dataset("t", torch.tensor([[0.5, 25.0]]), torch.tensor([0]), ["a", "b"], spec=spec)
