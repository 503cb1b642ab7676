"""Runtime guard: input detectors, drift, per-client extraction monitoring, verdict policy.

from bastion.guard import fit_guard, Guard
guard = fit_guard(module, bundle.train)          # fit + calibrate (1 % FPR by default)
guard.save(model_dir)                            # guard.json + guard.safetensors
guard = Guard.load(model_dir, module)
verdicts = guard.inspect(x, client_id="key-123")  # one GuardVerdict per sample
"""

from bastion.guard.config import GuardConfig, load_guard_config
from bastion.guard.guard import Guard, GuardNotFittedError, fit_guard
from bastion.guard.verdict import DriftStatus, GuardVerdict, Verdict

__all__ = [
    "DriftStatus",
    "Guard",
    "GuardConfig",
    "GuardNotFittedError",
    "GuardVerdict",
    "Verdict",
    "fit_guard",
    "load_guard_config",
]
