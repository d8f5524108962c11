"""KFP definition of the champion lookup (logic in executor.py)."""

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def champion(
    model_name: str,
    champion_model: dsl.Output[dsl.Model],
    alias: str = "champion",
    target: str = "local",
    mlflow_tracking_uri: str = "",
    project: str = "",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
):
    """The registry version named by ``alias``, as a Model artifact for evaluate's ``baseline_model``.

    MLflow for ``target="local"``, Vertex AI Model Registry for ``"google-cloud"``.
    The artifact's ``uri`` is the version's model directory (a local path or ``gs://``
    folder); when no version holds the alias yet, ``metadata["found"]`` is false and
    evaluate judges the new model by its absolute thresholds alone.

    Args:
        model_name: the registered model whose champion to look up.
        champion_model: output: the champion's model bundle (``metadata``: found, model_name, alias, model_dir, version).
        alias: the registry alias naming the version.
        target: "local" (MLflow) or "google-cloud" (Vertex AI Model Registry).
        mlflow_tracking_uri: MLflow registry; empty = cauce's local default.
        project: Google Cloud project of the Vertex AI Model Registry.
        vertex_region: Vertex AI region of the registry.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
    """
    from cauce.components.champion.executor import champion_metadata, find_champion

    model_dir, version = find_champion(
        model_name, alias, target, mlflow_tracking_uri, project, vertex_region, vertex_api_endpoint
    )
    if model_dir:
        champion_model.uri = model_dir
    champion_model.metadata.update(champion_metadata(model_name, alias, model_dir, version))
