"""Every read model Rapport keeps, by name. The runner knows none of them; the composition root
builds them from this list (with settings), and `--only NAME` picks among them."""

from __future__ import annotations

from projections.customer_360 import Customer360
from projections.lifecycle import Lifecycle
from projections.readmodel import ReadModel
from projections.satisfaction import Satisfaction
from projections.timeline import Timeline
from projections.value import Value

READ_MODELS: dict[str, type[ReadModel]] = {
    model.name: model for model in (Customer360, Lifecycle, Satisfaction, Timeline, Value)
}
