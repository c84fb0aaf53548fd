"""Control layer (FUM E.1, E.2, E.5, E.7): the ControlManager and its modules, monitoring, anomaly response,
tuning and interpretability. Layer: after `train`, before `distributed`/`cli`."""

from fumjax.control.manager import Action, ControlManager, ControlState, Metrics, effective_config
from fumjax.control.modules import (
    AnomalyResponse,
    ClusteringSchedule,
    InteractionModule,
    LoadModule,
    SOCModule,
    StabilityModule,
    StructuralSchedule,
    TuningSchedule,
    default_modules,
)
from fumjax.control.monitor import DebtTracker, Monitor, window_metrics

__all__ = [
    "Action",
    "AnomalyResponse",
    "ClusteringSchedule",
    "ControlManager",
    "ControlState",
    "DebtTracker",
    "InteractionModule",
    "LoadModule",
    "Metrics",
    "Monitor",
    "SOCModule",
    "StabilityModule",
    "StructuralSchedule",
    "TuningSchedule",
    "default_modules",
    "effective_config",
    "window_metrics",
]
