"""Assessment: threat models, probes, the runner, scoring, sanity checks.

The package itself is callable, so the Python API reads as documented::

    import bastion
    out = bastion.assess(model, (x, y), threat={"eps": [0.05]}, out_dir="out")

(``bastion.assess(...)`` is :func:`bastion.assess.api.assess`.)
"""

import sys
import types
from typing import Any

from bastion.assess.schema import Finding, Report, ThreatModel


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from bastion.assess.api import assess

        return assess(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Finding", "Report", "ThreatModel"]
