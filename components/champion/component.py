"""KFP definition of the champion lookup (logic in executor.py)."""

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def champion(
    model_name: str,
    alias: str = "champion",
    mlflow_tracking_uri: str = "",
    project: str = "",
    location: str = "us-central1",
    api_endpoint: str = "",
) -> str:
    """The model directory of the registry version named by ``alias`` (empty if none).

    Vertex Model Registry when ``project`` is set, MLflow otherwise. Feed it to
    evaluate's ``champion_model_uri`` for challenger-vs-champion thresholds.
    """
    from cauce.components.champion.executor import resolve_champion

    return resolve_champion(model_name, alias, mlflow_tracking_uri, project, location, api_endpoint)
