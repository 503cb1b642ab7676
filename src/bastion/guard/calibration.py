"""Choose the rows that calibrate the guard: rows the model never trained on.

A split-conformal threshold (:func:`~bastion.guard.base.conformal_threshold`) guarantees its
false-positive rate only when the calibration scores are exchangeable with the scores of
fresh traffic. A model's own training rows are not: it fits them better than unseen inputs
(lower Mahalanobis distances, more confident softmax), so thresholds set on them flag more
clean traffic than promised, and a drift reference of training features makes clean traffic
look drifted. :func:`choose_calibration` picks the calibration rows from what is known about
the model's training rows (:class:`~bastion.assess.probe.Members`: ``bastion train``
provenance or ``--members``) and returns a :class:`~bastion.guard.config.CalibrationRecord`
saying which rows were used and whether their disjointness from training is known.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import torch

from bastion.assess.probe import Members
from bastion.data.dataset import DataBundle, Dataset
from bastion.errors import ConfigError, DataError
from bastion.guard.config import CalibrationConfig, CalibrationRecord

log = logging.getLogger(__name__)
UNKNOWN = (
    "the model's training rows are unknown (no bastion train provenance for this training "
    "split, no --members): the test split is taken to be unseen, which cannot be checked"
)


@dataclass(frozen=True)
class CalibrationChoice:
    """The rows to fit the detectors on, the rows to calibrate on, and the record."""

    fit: Dataset
    calibration: Dataset
    record: CalibrationRecord


def needed(target_fpr: float) -> int:
    """Fewest calibration scores that certify ``target_fpr`` (n ≥ 1/α − 1)."""
    return max(1, math.ceil(1.0 / target_fpr) - 1)


def _test_share(
    bundle: DataBundle, members: Members | None, config: CalibrationConfig, seed: int
) -> CalibrationChoice:
    test = bundle.test
    pool = torch.arange(len(test))
    excluded = 0
    if members is not None and bool(members.test.any()):
        excluded = int(members.test.sum())
        pool = (~members.test).nonzero().flatten()
    if len(pool) < 2:
        raise DataError(f"{bundle.name}: the test split has no rows the model did not train on")
    perm = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 7))]
    n_cal = min(len(pool) - 1, max(1, int(round(config.test_fraction * len(pool)))))
    cal = test.subset(perm[:n_cal].sort().values, split=test.split)
    if members is None:
        disjoint, how = None, UNKNOWN
    else:
        disjoint = True
        how = f"training rows from {members.source}; none of them is a calibration row"
    record = CalibrationRecord.of(
        cal,
        source="test-split",
        description=(
            f"{n_cal} of the {len(test)} rows of {bundle.name}'s test split "
            f"({config.test_fraction:g}), held out of `bastion guard evaluate`"
        ),
        disjoint_from_training=disjoint,
        how_known=how,
        excluded_training_rows=excluded,
    )
    return CalibrationChoice(bundle.train, cal, record)


def _train_non_members(bundle: DataBundle, members: Members) -> CalibrationChoice:
    train = bundle.train
    out = (~members.train).nonzero().flatten()
    cal = train.subset(out, split=train.split)
    fit = train.subset(members.train.nonzero().flatten(), split=train.split)
    record = CalibrationRecord.of(
        cal,
        source="train-non-members",
        description=(
            f"the {len(out)} rows of {bundle.name}'s train split the model did not train on"
        ),
        disjoint_from_training=True,
        how_known=f"training rows from {members.source}",
        excluded_training_rows=int(members.train.sum()),
    )
    return CalibrationChoice(fit, cal, record)


def _fit_holdout(
    bundle: DataBundle, members: Members | None, fraction: float, seed: int
) -> CalibrationChoice:
    train = bundle.train
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_cal = max(1, int(round(fraction * len(train))))
    cal_idx, fit_idx = perm[:n_cal], perm[n_cal:]
    cal = train.subset(cal_idx.sort().values, split=train.split)
    if members is None:
        disjoint, how = None, "the model's training rows are unknown"
    else:
        overlap = int(members.train[cal_idx].sum())
        disjoint = overlap == 0
        how = f"{overlap} of the {n_cal} rows are training rows ({members.source})"
    log.warning(
        "the guard is calibrated on a held-out share of its fit data (%s): thresholds hold "
        "their false-positive rate only if the model never trained on those rows",
        how,
    )
    record = CalibrationRecord.of(
        cal,
        source="fit-holdout",
        description=f"{n_cal} rows ({fraction:g}) held out of {bundle.name}'s train split",
        disjoint_from_training=disjoint,
        how_known=how,
    )
    return CalibrationChoice(train.subset(fit_idx, split=train.split), cal, record)


def _row_hashes(x: torch.Tensor) -> set[str]:
    flat = x.detach().float().flatten(1).contiguous().numpy()
    return {hashlib.sha256(r.tobytes()).hexdigest() for r in flat}


def from_file(
    bundle: DataBundle, calibration: DataBundle, members: Members | None, source: str
) -> CalibrationChoice:
    """Every row of the file ``calibration`` (both of its splits) except rows equal to a
    training row (the known members, else the whole train split of ``bundle``)."""
    if list(calibration.train.shape) != list(bundle.train.shape):
        raise DataError(
            f"calibration data {source} has samples of shape {tuple(calibration.train.shape)}, "
            f"the training data {tuple(bundle.train.shape)}"
        )
    x = torch.cat([calibration.train.x, calibration.test.x])
    y = torch.cat([calibration.train.y, calibration.test.y])
    rows = torch.cat([calibration.train.rows, calibration.test.rows])
    known = members.split(bundle)[0] if members is not None else bundle.train
    train_hashes = _row_hashes(known.x)
    flat = x.detach().float().flatten(1).contiguous().numpy()
    keep = torch.tensor([hashlib.sha256(r.tobytes()).hexdigest() not in train_hashes for r in flat])
    if not bool(keep.any()):
        raise DataError(f"calibration data {source}: every row is also a training row")
    cal = Dataset(
        name=calibration.name,
        x=x[keep],
        y=y[keep],
        class_names=calibration.train.class_names,
        source=calibration.train.source,
        split="calibration",
        spec=bundle.train.input_spec,
        rows=rows[keep],
    )
    dropped = int((~keep).sum())
    if members is None:
        disjoint = None
        how = (
            "the model's training rows are unknown; no kept row equals a row of "
            f"{bundle.name}'s train split"
        )
    else:
        disjoint = True
        how = f"no kept row equals one of the training rows ({members.source})"
    record = CalibrationRecord.of(
        cal,
        split="calibration",
        source="file",
        description=f"{len(cal)} rows of {source}",
        disjoint_from_training=disjoint,
        how_known=how + (f"; {dropped} rows equal to training rows dropped" if dropped else ""),
        excluded_training_rows=dropped,
    )
    return CalibrationChoice(bundle.train, cal, record)


def choose_calibration(
    bundle: DataBundle,
    *,
    members: Members | None,
    config: CalibrationConfig,
    target_fpr: float,
    calibration_fraction: float = 0.3,
    seed: int = 0,
) -> CalibrationChoice:
    """The fit rows, calibration rows and record for ``config.split`` (see
    :class:`~bastion.guard.config.CalibrationConfig`)."""
    split = config.split
    enough = members is not None and int((~members.train).sum()) >= needed(target_fpr)
    if split == "train-non-members":
        if members is None:
            raise ConfigError(
                "calibration split train-non-members needs the model's training rows: pass "
                "--members FILE, or use --calibration test"
            )
        if not enough:
            raise ConfigError(
                f"only {int((~members.train).sum())} train rows are not training rows; "
                f"{needed(target_fpr)} are needed for an FPR of {target_fpr:g}: use "
                "--calibration test"
            )
        return _train_non_members(bundle, members)
    if split == "fit-holdout":
        return _fit_holdout(bundle, members, calibration_fraction, seed)
    if split == "auto" and enough and members is not None:
        return _train_non_members(bundle, members)
    return _test_share(bundle, members, config, seed)


def evaluation_rows(test: Dataset, record: CalibrationRecord | None) -> tuple[Dataset, str]:
    """``test`` without the rows that calibrated the guard, and a note saying what was done."""
    if record is None:
        return test, "the guard records no calibration split (fitted before it was recorded)"
    if record.data != test.name or record.split != test.split:
        return test, f"calibrated on {record.description}; none of them is in {test.name}"
    used = torch.isin(test.rows, torch.tensor(record.rows, dtype=torch.long))
    if not bool(used.any()):
        return test, f"calibrated on {record.description}; none of them is evaluated"
    if bool(used.all()):
        raise DataError(
            f"every evaluation row of {test.name} calibrated the guard: evaluate on other data"
        )
    kept = test.subset((~used).nonzero().flatten())
    return kept, (
        f"calibrated on {record.description}: those {int(used.sum())} rows are left out, "
        f"{len(kept)} evaluated"
    )
