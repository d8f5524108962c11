"""Where a pipeline's steps act: ``target="local"`` (the embedded engine, MLflow on
sqlite, the local serving process) or ``target="google-cloud"`` (BigQuery, Vertex AI
Model Registry and endpoints, Dataflow).

One parameter, named the same in every component and pipeline, instead of inferring
the target from whether ``project`` happens to be empty.
"""

from __future__ import annotations

from cauce.artifacts import CauceError

LOCAL = "local"
GOOGLE_CLOUD = "google-cloud"
TARGETS = (LOCAL, GOOGLE_CLOUD)


def on_google_cloud(target: str, project: str = "", needs_project: bool = True) -> bool:
    """True for ``"google-cloud"``, False for ``"local"``; refuses anything else, and a
    Google Cloud target without the ``project`` it needs."""
    if target not in TARGETS:
        raise CauceError(f"target {target!r} is not one of {list(TARGETS)}")
    if target == GOOGLE_CLOUD and needs_project and not project:
        raise CauceError('target is "google-cloud" but project is empty: name the Google Cloud project')
    return target == GOOGLE_CLOUD
