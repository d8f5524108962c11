"""The cauce components: one KFP v2 component per lifecycle phase.

    from cauce.components.extract.component import extract
    from cauce.components.train.component import train

Each is a lightweight Python component on a cauce image (``component.py``); the
logic it runs is plain Python in ``executor.py`` beside it, which tests call
without KFP. Package ``__init__`` files import nothing: inside a running step
KFP loads a runtime-only ``kfp.dsl`` in which definitions cannot be built.
"""

PHASES = ("extract", "transform", "train", "evaluate", "register", "deploy", "monitor")
