"""The `training` pipeline: extract -> validate -> transform -> train -> evaluate (against
the current champion) -> if promoted: register (pending) -> deploy -> champion; otherwise
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
from cauce.components.preflight.component import preflight
from cauce.components.register.component import register, register_vertex
from cauce.components.train.component import FRAMEWORK_IMAGE_FAMILIES, train_component
from cauce.components.transform.component import transform
from cauce.components.validate.component import validate
from cauce.images import BEAM_IMAGE, SERVING_IMAGE, TF_IMAGE
from cauce.kfp_local_compat import allow_oneof_artifacts

allow_oneof_artifacts()  # kfp.local resolves dsl.OneOf over the train branches' model as Vertex does


def build_training_pipeline(train_ops: dict | None = None, name: str = "cauce-training"):
    """Build the training pipeline with one train task per framework of ``train_ops``.

    ``train_ops`` maps a framework to its train op (default: the train component in
    each framework's image family, ``train_component``: sklearn in base, keras in tf,
    torch in torch). The ``framework`` parameter picks the branch that runs (``dsl.If``);
    the model reaches evaluate, register and deploy through ``dsl.OneOf``. A variant may
    build only one framework, e.g. GCPC's ``create_custom_training_job_from_component``
    (pipelines/vertex_training.py); preflight then refuses any other framework.
    """
    train_ops = dict(train_ops or {framework: train_component(framework) for framework in FRAMEWORK_IMAGE_FAMILIES})
    frameworks = list(train_ops)
    images = lineage.component_images(
        extract, validate, transform, train_ops[frameworks[0]], champion, evaluate, register, register_vertex, deploy,
        deploy_vertex,
    )  # fmt: skip
    for framework_name, op in train_ops.items():  # the image each framework's train step runs in
        images.update({f"train-{framework_name}": image for image in lineage.component_images(op).values()})

    @dsl.pipeline(
        name=name,
        description="Extract from BigQuery, validate (TFDV statistics, schema, anomalies), transform with Beam, train, evaluate with TFMA, register and deploy if blessed.",
    )
    def training(
        # The data: a table (DATASET.TABLE; `cauce load` loads files into the local engine)
        # or a BigQuery SELECT; the column identifying a row (decides its split); the label.
        source: str = "",
        key_column: str = "",
        label: str = "",
        # Empty lists and no transform_recipe: every other column, numbers as numeric
        # features and strings as categorical ones (preflight resolves them).
        numeric_features: list = [],
        categorical_features: list = [],
        # Columns (or crosses "a,b") whose every value must also pass the gate; empty: overall only.
        slice_features: list = [],
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
        # validate's statistics: "" in the step's process; "DirectRunner" or "DataflowRunner" as a
        # Beam combiner (same statistics), with pipeline_options and dataflow as transform's.
        validate_runner: str = "",
        # evaluate's scoring, exact metrics and TFMA: "" in the step's process; "DirectRunner" or
        # "DataflowRunner" in one Beam pipeline (same outputs), with pipeline_options and dataflow.
        evaluate_runner: str = "",
        task: str = "binary",  # "binary" | "multiclass" | "regression"
        # "sklearn" (LightGBM and scikit-learn, base image) | "keras" (tf image) | "torch" (torch image)
        framework: str = frameworks[0],
        hyperparameters: dict = {},  # empty: the trainer's defaults for its framework
        # Metric -> lower bound (or {"lower_bound", "upper_bound"}), metric names per task in
        # cauce.tasks; empty: the task's defaults (binary {"auc": 0.5}, others none).
        thresholds: dict = {},
        # Metric -> margin the new model must beat the champion by; empty: the task's
        # defaults (auc / sparse_categorical_accuracy / root_mean_squared_error, margin 0).
        change_thresholds: dict = {},
        model_name: str = "cauce-model",
        endpoint_name: str = "cauce-model",
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
        # Rows without a label are counted by validate and left out of training and
        # evaluation; more than this share of a split's rows is an anomaly.
        max_missing_label_fraction: float = 0.1,
        # True: a blessed model is registered as "pending" and waits for
        # `cauce models approve NAME/VERSION`, which deploys it through the same canary path.
        require_approval: bool = False,
        # Set by monitoring's retrain step (the drift that started the run); recorded in lineage.
        trigger: dict = {},
        # Compile-time: cauce's version, the images this spec names, the repository's commit.
        code_version: dict = lineage.code_version(images),
    ):
        """Train, evaluate against the champion, register and deploy a model of your data.

        Args:
            source: the data: a table (DATASET.TABLE; `cauce load` loads files into the local engine, `cauce tables` lists them) or a BigQuery SELECT query.
            key_column: the column that identifies a row; a hash of it decides the row's split, the same on every run and engine.
            label: the column to predict. Rows where it is missing (null or NaN) are counted by validate and left out of training and evaluation.
            numeric_features: numeric feature columns (z-scored). With categorical_features empty too and no transform_recipe: every other column by type.
            categorical_features: categorical feature columns (one-hot over the most frequent values).
            slice_features: columns or crosses "a,b" on whose every value the model must also pass the gate; empty: overall only.
            splits: split name -> fraction; needs "train" and "eval".
            local_database: the local engine's DuckDB file; empty: $CAUCE_HOME/bigquery/local.duckdb.
            bigquery_location: BigQuery location of the query job (target google-cloud).
            query_parameters: values of @name parameters of a source query (typed BigQuery parameters).
            source_identifiers: values of ${name} placeholders in source for project/dataset/table ids.
            maximum_bytes_billed: BigQuery refuses a query that would bill more; 0: no limit.
            transform_recipe: the full declarative transform (docs/recipes.md); give it instead of the feature lists.
            runner: Beam runner of transform: DirectRunner locally, DataflowRunner on Google Cloud.
            pipeline_options: further Beam pipeline options.
            dataflow: Dataflow options (region, temp_location, max_num_workers, ...; cauce.beam_pipelines.DATAFLOW_FIELDS).
            validate_runner: where validate computes its statistics: empty in its process; DirectRunner or DataflowRunner (with pipeline_options and dataflow) as a Beam combiner, the same statistics.
            evaluate_runner: where evaluate scores the eval split and runs TFMA: empty in its process; DirectRunner or DataflowRunner (with pipeline_options and dataflow; workers run the tf image) in one Beam pipeline, the same metrics and plots.
            task: binary | multiclass | regression. Metrics: binary auc, auc_precision_recall, binary_accuracy, precision, recall, binary_crossentropy; multiclass sparse_categorical_accuracy, sparse_categorical_crossentropy; regression root_mean_squared_error, mean_squared_error, mean_absolute_error (all: example_count).
            framework: sklearn (LightGBM / scikit-learn, base image) | keras (tf image) | torch (torch image).
            hyperparameters: the framework's (components/train/README.md); empty: its defaults.
            thresholds: metric -> lower bound, or {"lower_bound", "upper_bound"}; empty: the task's defaults (binary {"auc": 0.5}; multiclass and regression none).
            change_thresholds: metric -> margin by which the model must beat the champion, overall and on every slice; empty: binary auc, multiclass sparse_categorical_accuracy, regression root_mean_squared_error, margin 0.
            model_name: the registered model's name (MLflow locally, Vertex Model Registry on Google Cloud).
            endpoint_name: the endpoint that serves it (a local serving process, or a Vertex endpoint).
            target: local (local engine, MLflow, local serving) | google-cloud (BigQuery, Vertex AI in project/vertex_region).
            project: Google Cloud project (target google-cloud).
            vertex_region: Vertex AI region.
            vertex_api_endpoint: a Vertex AI API endpoint other than the region's.
            mlflow_tracking_uri: MLflow registry; empty: sqlite under $CAUCE_HOME.
            serving_image: the image Vertex serves the model with.
            machine_type: machine type of the Vertex endpoint.
            canary_traffic_percentage: 1..100; below 100 a model replacing a serving one first takes this share, is smoke-tested, then promoted or rolled back.
            port: local serving port.
            validation_policy: fail (anomalies stop the run before transform) | warn.
            baseline_schema_uri: a schema to validate against; empty: inferred from the train split.
            max_out_of_domain_fraction: share of an eval split's values that may fall outside a training domain before it is an anomaly.
            max_missing_label_fraction: share of a split's rows that may lack a label before it is an anomaly (validation_policy decides what follows).
            require_approval: true: a blessed model is registered as pending and waits for `cauce models approve`.
            trigger: set by monitoring's retrain step; recorded in lineage.
            code_version: compile-time: cauce's version, the images of this spec, the commit.
        """
        # Every parameter checked against the source's schema and the task, in seconds,
        # before any heavy step; it also resolves empty feature lists and thresholds.
        checked = preflight(
            source=source,
            key_column=key_column,
            label=label,
            numeric_features=numeric_features,
            categorical_features=categorical_features,
            slice_features=slice_features,
            transform_recipe=transform_recipe,
            task=task,
            framework=framework,
            frameworks=frameworks,
            hyperparameters=hyperparameters,
            thresholds=thresholds,
            change_thresholds=change_thresholds,
            splits=splits,
            validation_policy=validation_policy,
            canary_traffic_percentage=canary_traffic_percentage,
            port=port,
            endpoint_name=endpoint_name,
            target=target,
            local_database=local_database,
            project=project,
            bigquery_location=bigquery_location,
            query_parameters=query_parameters,
            identifiers=source_identifiers,
            max_missing_label_fraction=max_missing_label_fraction,
        ).set_display_name("preflight")
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
        ).set_display_name("extract").after(checked)
        validated = validate(
            dataset=extracted.outputs["dataset"],
            baseline_schema_uri=baseline_schema_uri,
            on_anomaly=validation_policy,
            max_out_of_domain_fraction=max_out_of_domain_fraction,
            runner=validate_runner,
            pipeline_options=pipeline_options,
            project=project,
            dataflow=dataflow,
            beam_image=BEAM_IMAGE,
            label=label,
            max_missing_label_fraction=max_missing_label_fraction,
        ).set_display_name("validate")
        # transform reads extract's dataset itself; validate gates it: with the "fail"
        # policy anomalies stop the run here, before any Beam or training work.
        transformed = transform(
            dataset=extracted.outputs["dataset"],
            label=label,
            numeric_features=checked.outputs["numeric_features"],
            categorical_features=checked.outputs["categorical_features"],
            recipe=transform_recipe,
            runner=runner,
            pipeline_options=pipeline_options,
            project=project,
            dataflow=dataflow,
            # Fixed at compile time: the running step does not know which release compiled it.
            beam_image=BEAM_IMAGE,
            task=task,
        ).set_display_name("transform").after(validated)
        # One train task per framework, each in its image family; the framework
        # parameter picks the one that runs.
        def train_with(op):
            return op(
                transformed=transformed.outputs["transformed"],
                fitted_transform=transformed.outputs["fitted_transform"],
                hyperparameters=hyperparameters,
                task=task,
                framework=framework,
            ).set_display_name("train")

        if len(train_ops) == 1:
            trained_model = train_with(train_ops[frameworks[0]]).outputs["model"]
        else:
            # OneOf needs an Else branch; preflight has refused any other framework by then.
            branches = []
            for index, (framework_name, op) in enumerate(train_ops.items()):
                if index == 0:
                    branch = dsl.If(framework == framework_name, name=f"train-{framework_name}")
                elif index < len(train_ops) - 1:
                    branch = dsl.Elif(framework == framework_name, name=f"train-{framework_name}")
                else:
                    branch = dsl.Else(name=f"train-{framework_name}")
                with branch:
                    branches.append(train_with(op))
            trained_model = dsl.OneOf(*(task_.outputs["model"] for task_ in branches))

        current_champion = champion(
            model_name=model_name,
            target=target,
            mlflow_tracking_uri=mlflow_tracking_uri,
            project=project,
            vertex_region=vertex_region,
            vertex_api_endpoint=vertex_api_endpoint,
        ).set_display_name("champion")
        evaluated = evaluate(
            model=trained_model,
            dataset=extracted.outputs["dataset"],
            slice_features=slice_features,
            thresholds=checked.outputs["thresholds"],
            baseline_model=current_champion.outputs["champion_model"],
            change_thresholds=checked.outputs["change_thresholds"],
            runner=evaluate_runner,
            pipeline_options=pipeline_options,
            project=project,
            dataflow=dataflow,
            # Dataflow's workers need TFMA: the tf image, the step's own.
            beam_image=TF_IMAGE,
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
                model=trained_model,
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                alias=alias,
                **lineage_inputs,
            ).set_display_name(display_name)

        def register_on_vertex_as(alias: str, display_name: str):
            return register_vertex(
                model=trained_model,
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
            # Registered "pending"; deploy makes it champion only once it serves, so a failed
            # deploy (or a bad canary share) never leaves the alias on a version nothing
            # serves: the version stays pending, for `cauce models approve` or `reject`.
            with dsl.If(require_approval == False, name="promote"):
                with dsl.If(target == "local", name="local-target"):
                    registered = register_as("pending", "register")
                    deploy(
                        registered_model=registered.outputs["registered_model"],
                        smoke_dataset=extracted.outputs["dataset"],
                        endpoint_name=endpoint_name,
                        canary_traffic_percentage=canary_traffic_percentage,
                        port=port,
                        set_champion=True,
                        mlflow_tracking_uri=mlflow_tracking_uri,
                    ).set_display_name("deploy")
                with dsl.Else(name="google-cloud-target"):
                    registered_on_vertex = register_on_vertex_as("pending", "register-vertex")
                    deploy_vertex(
                        vertex_model=registered_on_vertex.outputs["vertex_model"],
                        smoke_dataset=extracted.outputs["dataset"],
                        endpoint_name=endpoint_name,
                        project=project,
                        vertex_region=vertex_region,
                        vertex_api_endpoint=vertex_api_endpoint,
                        machine_type=machine_type,
                        canary_traffic_percentage=canary_traffic_percentage,
                        set_champion=True,
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
