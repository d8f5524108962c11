"""The `training` pipeline: extract -> validate -> transform -> train -> evaluate (against
the current champion) -> if promoted: register as champion -> deploy; otherwise
register as challenger and leave the deployed champion serving.

One compiled spec serves both places; only parameter values differ:
* locally (defaults): the local BigQuery engine, Beam's DirectRunner, MLflow on
  sqlite, and a serving process on 127.0.0.1:8080;
* on Vertex: ``target="google-cloud"`` and ``project``/``vertex_region`` set: the data comes
  from BigQuery, the model goes to the Vertex Model Registry and a Vertex endpoint;
  ``runner="DataflowRunner"`` with the ``dataflow`` options runs transform on Dataflow.
"""

from kfp import dsl

from cauce import lineage
from cauce.components.champion.component import champion
from cauce.components.deploy.component import deploy, deploy_vertex
from cauce.components.evaluate.component import evaluate
from cauce.components.extract.component import extract
from cauce.components.register.component import register, register_vertex
from cauce.components.train.component import train
from cauce.components.transform.component import transform
from cauce.components.validate.component import validate
from cauce.demo import DEMO_CATEGORICAL, DEMO_KEY, DEMO_LABEL, DEMO_NUMERIC, DEMO_TABLE
from cauce.images import BEAM_IMAGE, SERVING_IMAGE


def build_training_pipeline(train_op=train, name: str = "cauce-training"):
    """Build the training pipeline around ``train_op``.

    ``train_op`` is the train component itself (default) or a variant of it, for
    example GCPC's ``create_custom_training_job_from_component(train, ...)`` to run
    the same step as a Vertex AI CustomJob with chosen machines and accelerators.
    """

    @dsl.pipeline(
        name=name,
        description="Extract from BigQuery, validate (TFDV statistics, schema, anomalies), transform with Beam, train, evaluate with TFMA, register and deploy if blessed.",
    )
    def training(
        source: str = DEMO_TABLE,
        key_column: str = DEMO_KEY,
        label: str = DEMO_LABEL,
        numeric_features: list = DEMO_NUMERIC,
        categorical_features: list = DEMO_CATEGORICAL,
        slice_features: list = ["payment_type"],
        splits: dict = {"train": 0.8, "eval": 0.2},
        local_database: str = "",
        bigquery_location: str = "US",
        query_parameters: dict = {},
        # ${name} placeholders of source -> project/dataset/table ids, e.g. {"source_dataset": "taxi"}
        source_identifiers: dict = {},
        maximum_bytes_billed: int = 0,  # BigQuery: refuse a query that would bill more; 0 = no limit
        # The full declarative transform (docs/recipes.md); give it with
        # numeric_features=[] and categorical_features=[], which are its shorthand.
        transform_recipe: dict = {},
        runner: str = "DirectRunner",  # "DataflowRunner" on Google Cloud, with the dataflow options
        pipeline_options: dict = {},
        # Dataflow options (cauce.beam_pipelines.DATAFLOW_FIELDS), e.g. {"region": "us-central1",
        # "temp_location": "gs://bucket/tmp", "max_num_workers": 20}; workers run the beam
        # image this spec was compiled with unless it names an sdk_container_image.
        dataflow: dict = {},
        task: str = "binary",
        hyperparameters: dict = {},  # empty: the trainer's defaults for its framework
        thresholds: dict = {"auc": 0.7},
        change_thresholds: dict = {"auc": 0.0},
        model_name: str = "taxi-tips",
        endpoint_name: str = "taxi-tips",
        # "local": the local query engine, MLflow registry and the local serving process;
        # "google-cloud": BigQuery, Vertex AI Model Registry and a Vertex endpoint in
        # project/vertex_region.
        target: str = "local",
        project: str = "",
        vertex_region: str = "us-central1",
        vertex_api_endpoint: str = "",
        mlflow_tracking_uri: str = "",
        serving_image: str = SERVING_IMAGE,
        machine_type: str = "n1-standard-2",
        # < 100: a promoted model replacing a serving one first takes this share of traffic,
        # is smoke-tested, then promoted or rolled back (the old version keeps serving).
        canary_traffic_percentage: int = 100,
        port: int = 8080,
        # "fail": anomalies stop the run before transform (outputs kept for inspection);
        # "warn": they are reported and the run goes on.
        validation_policy: str = "fail",
        baseline_schema_uri: str = "",  # empty: infer the schema from the train split
        # Categories unseen in training are normal in a long tail: up to 1 % of an eval
        # split's values may fall outside a domain before it counts as an anomaly.
        max_out_of_domain_fraction: float = 0.01,
        # True: a blessed model is registered as "pending" and waits for
        # `cauce models approve NAME/VERSION`, which deploys it through the same canary path.
        require_approval: bool = False,
        # Set by monitoring's retrain step (the drift that started the run); recorded in lineage.
        trigger: dict = {},
        # Compile-time: cauce's version, the images this spec names, the repository's commit.
        code_version: dict = lineage.code_version(lineage.component_images(
            extract, validate, transform, train_op, champion, evaluate, register, register_vertex, deploy, deploy_vertex
        )),  # fmt: skip
    ):
        extracted = extract(
            source=source,
            key_column=key_column,
            splits=splits,
            target=target,
            local_database=local_database,
            project=project,
            bigquery_location=bigquery_location,
            query_parameters=query_parameters,
            identifiers=source_identifiers,
            maximum_bytes_billed=maximum_bytes_billed,
        ).set_display_name("extract")
        validated = validate(
            dataset=extracted.outputs["dataset"],
            baseline_schema_uri=baseline_schema_uri,
            on_anomaly=validation_policy,
            max_out_of_domain_fraction=max_out_of_domain_fraction,
        ).set_display_name("validate")
        # transform reads extract's dataset itself; validate gates it: with the "fail"
        # policy anomalies stop the run here, before any Beam or training work.
        transformed = transform(
            dataset=extracted.outputs["dataset"],
            label=label,
            numeric_features=numeric_features,
            categorical_features=categorical_features,
            recipe=transform_recipe,
            runner=runner,
            pipeline_options=pipeline_options,
            project=project,
            dataflow=dataflow,
            # Fixed at compile time: the running step does not know which release compiled it.
            beam_image=BEAM_IMAGE,
            task=task,
        ).set_display_name("transform").after(validated)
        trained = train_op(
            transformed=transformed.outputs["transformed"],
            fitted_transform=transformed.outputs["fitted_transform"],
            hyperparameters=hyperparameters,
            task=task,
        ).set_display_name("train")
        current_champion = champion(
            model_name=model_name,
            target=target,
            mlflow_tracking_uri=mlflow_tracking_uri,
            project=project,
            vertex_region=vertex_region,
            vertex_api_endpoint=vertex_api_endpoint,
        ).set_display_name("champion")
        evaluated = evaluate(
            model=trained.outputs["model"],
            dataset=extracted.outputs["dataset"],
            slice_features=slice_features,
            thresholds=thresholds,
            baseline_model=current_champion.outputs["champion_model"],
            change_thresholds=change_thresholds,
        ).set_display_name("evaluate")

        # What every registered version records about its making (cauce.lineage); the
        # placeholders resolve to the run's id and name on Vertex, Kubeflow and kfp.local.
        lineage_inputs = dict(
            dataset=extracted.outputs["dataset"],
            evaluation=evaluated.outputs["evaluation"],
            baseline_model=current_champion.outputs["champion_model"],
            pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            code_version=code_version,
            trigger=trigger,
            deployment={
                "endpoint_name": endpoint_name,
                "port": port,
                "canary_traffic_percentage": canary_traffic_percentage,
                "machine_type": machine_type,
            },
        )

        def register_as(alias: str, display_name: str):
            return register(
                model=trained.outputs["model"],
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                alias=alias,
                **lineage_inputs,
            ).set_display_name(display_name)

        def register_on_vertex_as(alias: str, display_name: str):
            return register_vertex(
                model=trained.outputs["model"],
                model_name=model_name,
                project=project,
                vertex_region=vertex_region,
                vertex_api_endpoint=vertex_api_endpoint,
                serving_image=serving_image,
                alias=alias,
                **lineage_inputs,
            ).set_display_name(display_name)

        # The one promotion gate: blessed = passes the absolute thresholds and, when a
        # champion exists, beats it by the margins overall and on every slice.
        # (A single bool output, not a NamedTuple field: kfp.local 2.17 cannot resolve
        # a dsl.If on a NamedTuple field and silently skips the branch.)
        # Inside it, the target picks the registry and the endpoint: each branch passes
        # typed artifacts (Model -> endpoint, google.VertexModel -> google.VertexEndpoint).
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):
            # The approval gate: a blessed model waits as "pending", deployed by
            # `cauce models approve` through the same canary path, or never (`reject`).
            with dsl.If(require_approval == False, name="promote"):
                with dsl.If(target == "local", name="local-target"):
                    registered = register_as("champion", "register")
                    deploy(
                        registered_model=registered.outputs["registered_model"],
                        smoke_dataset=extracted.outputs["dataset"],
                        endpoint_name=endpoint_name,
                        canary_traffic_percentage=canary_traffic_percentage,
                        port=port,
                    ).set_display_name("deploy")
                with dsl.Else(name="google-cloud-target"):
                    registered_on_vertex = register_on_vertex_as("champion", "register-vertex")
                    deploy_vertex(
                        vertex_model=registered_on_vertex.outputs["vertex_model"],
                        smoke_dataset=extracted.outputs["dataset"],
                        endpoint_name=endpoint_name,
                        project=project,
                        vertex_region=vertex_region,
                        vertex_api_endpoint=vertex_api_endpoint,
                        machine_type=machine_type,
                        canary_traffic_percentage=canary_traffic_percentage,
                    ).set_display_name("deploy-vertex")
            with dsl.Else(name="await-approval"):
                with dsl.If(target == "local", name="local-pending"):
                    register_as("pending", "register-pending")
                with dsl.Else(name="google-cloud-pending"):
                    register_on_vertex_as("pending", "register-vertex-pending")
        with dsl.Else(name="keep-champion"):
            with dsl.If(target == "local", name="local-challenger"):
                register_as("challenger", "register-challenger")
            with dsl.Else(name="google-cloud-challenger"):
                register_on_vertex_as("challenger", "register-vertex-challenger")

    return training


training = build_training_pipeline()
