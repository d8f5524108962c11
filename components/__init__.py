"""The cauce components: one KFP v2 component per lifecycle phase.

    from cauce.components.extract.component import extract
    from cauce.components.train.component import train

Each is a lightweight Python component on a cauce image (``component.py``); the
logic it runs is plain Python in ``executor.py`` beside it, which tests call
without KFP. Package ``__init__`` files import nothing of cauce's: inside a running
step KFP loads a runtime-only ``kfp.dsl`` in which definitions cannot be built.
"""

import atexit
import gc

# Every step's process imports this package. When it exits, the interpreter's last
# garbage collections walk every object the step's libraries created; for TensorFlow
# and Beam that alone took 1.9 s of evaluate's 10 s at 1 M rows (0.6 s after Beam,
# 0.4 s after MLflow, 0.3 s after LightGBM; bench/README.md). Freezing them in an exit
# handler (it runs after those the libraries registered when the step imported them)
# leaves those collections almost nothing to walk. Every exit handler still runs,
# and objects are still freed by reference counting as modules are torn down; only
# garbage in reference cycles at exit is left to the operating system, which Python
# never promised to collect at exit.
atexit.register(gc.freeze)

PHASES = ("extract", "transform", "train", "evaluate", "register", "deploy", "monitor")
