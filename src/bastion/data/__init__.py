"""Datasets: loaders (digits, IDX, npz, CSV) and provenance manifests."""

from bastion.data.dataset import DataBundle, Dataset, DatasetManifest
from bastion.data.loaders import DATASET_NAMES, load_dataset

__all__ = ["DATASET_NAMES", "DataBundle", "Dataset", "DatasetManifest", "load_dataset"]
