"""How losses and feature sources reach the learning-status indicators owned by the ROI heads."""
from typing import Dict, Optional

from torch import nn


class IndicatorUser:
    """Mixin for a module that reads one indicator, named by ``indicator_name``.

    The indicator is owned (and checkpointed) by the ROI heads; users hold a plain reference, so its
    buffers are not saved twice.
    """

    indicator_name: Optional[str] = None

    def bind_indicator(self, indicator: nn.Module):
        self.__dict__["indicator"] = indicator

    @property
    def bound_indicator(self):
        indicator = self.__dict__.get("indicator")
        if indicator is None:
            raise RuntimeError(
                f"{type(self).__name__} reads indicator {self.indicator_name!r} but none was bound; "
                "use it inside LongTailROIHeads with that indicator in `indicators`"
            )
        return indicator


def bind_named_indicator(module, indicators: Dict[str, nn.Module], owner: str):
    """Binds ``indicators[module.indicator_name]`` to ``module`` (no-op if it names none)."""
    name = getattr(module, "indicator_name", None)
    if name is None:
        return
    if name not in indicators:
        raise KeyError(f"{owner} needs indicator {name!r}; the ROI heads have {sorted(indicators)}")
    module.bind_indicator(indicators[name])
