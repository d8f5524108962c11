"""Pipelines built from cauce components, by name (the CLI compiles and runs these)."""

from cauce.pipelines.monitoring import monitoring
from cauce.pipelines.training import training

PIPELINES = {"training": training, "monitoring": monitoring}

__all__ = ["PIPELINES", "training", "monitoring"]
