"""The preflight component: KFP definition in component.py, plain-Python logic in executor.py.

Nothing is imported here: inside a running step KFP loads a runtime-only
``kfp.dsl`` in which component definitions cannot be built.
"""
