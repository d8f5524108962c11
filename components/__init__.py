"""The cauce components: one KFP v2 component per lifecycle phase.

    from cauce.components import extract, transform, train, evaluate, register, deploy, monitor

Each is a lightweight Python component on a cauce image; the logic it runs is
plain Python in ``cauce.components.<phase>.executor``. Component definitions
load on first access, so importing an executor (inside a running step) does
not load every other component.
"""

import importlib

__all__ = ["extract", "transform", "train", "evaluate", "register", "deploy", "monitor"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"cauce.components.{name}.component"), name)
    raise AttributeError(f"module 'cauce.components' has no attribute {name!r}")
