"""cauce: Kubeflow / Vertex AI pipeline components for the whole ML lifecycle.

The version below is the single source of truth: pyproject.toml reads it, the
container tags and exported component YAMLs carry it.
"""

__version__ = "0.1.0"
