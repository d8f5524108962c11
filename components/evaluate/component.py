"""KFP definition of the evaluate step: a thin shell over ``executor.run_evaluate``."""

from kfp import dsl

from cauce.images import TF_IMAGE


@dsl.component(base_image=TF_IMAGE, install_kfp_package=False)
def evaluate(
    model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    evaluation: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.HTML],
    split: str = "eval",
    slice_features: list = [],  # noqa: B006 - KFP takes parameter defaults from the signature
    thresholds: dict = {"auc": 0.6},  # noqa: B006
    baseline_model: dsl.Input[dsl.Model] = None,
    change_thresholds: dict = {},  # noqa: B006
    slice_thresholds: dict = {},  # noqa: B006
    runner: str = "",
    pipeline_options: dict = {},  # noqa: B006
    project: str = "",
    dataflow: dict = {},  # noqa: B006
    beam_image: str = "",
) -> bool:
    """Evaluate ``model`` on ``split`` of the raw ``dataset`` with TensorFlow Model Analysis.

    ``thresholds`` maps a metric name to a lower bound (or to
    ``{"lower_bound": x, "upper_bound": y}``) on the overall slice. With
    ``baseline_model`` (the champion component's ``champion_model``, or any cauce
    Model; unconnected, or a champion lookup that found none, for the first model),
    ``change_thresholds`` (metric -> margin) require this model to beat
    the champion by the margin overall and on every slice; ``slice_thresholds``
    bound every slice. ``slice_features`` entries are columns or crosses ("a,b").
    ``blessed``
    is TFMA's validation result, and the component's single output (a single
    output rather than a NamedTuple because kfp.local cannot resolve a
    ``dsl.If`` on a NamedTuple field; the metrics are in ``metrics``). ``evaluation`` holds TFMA's output,
    ``evaluation.json`` and the report; ``report`` is the same HTML report.

    Args:
        model: the cauce Model bundle evaluated (train's output).
        dataset: the raw cauce Dataset (extract's output); the model applies its own transform.
        metrics: output: the overall metrics, one scalar each (undefined ones left out).
        classification_metrics: output: the ROC curve (binary) and the confusion matrix
            (classifiers), which Vertex AI draws.
        evaluation: output: TFMA's output, evaluation.json and the report; metadata ``blessed``,
            ``reasons``, ``split``, ``rows``, ``rows_missing_label``.
        report: output: the same HTML report as one file.
        split: the split of ``dataset`` evaluated.
        slice_features: columns, or crosses "a,b", whose every value is a slice.
        thresholds: metric -> lower bound, or -> {"lower_bound": x, "upper_bound": y}, on the
            overall slice; the metric names depend on the task (cauce.tasks).
        baseline_model: the champion (the champion component's ``champion_model``, or any cauce
            Model) scored on the same rows; unconnected, or a lookup that found none, for the
            first model.
        change_thresholds: metric -> margin by which this model must beat ``baseline_model``,
            overall and on every slice.
        slice_thresholds: metric -> bound, as ``thresholds``, on every slice.
        runner: empty scores the split and computes everything in the step's process;
            "DirectRunner" (Beam's FnApiRunner) or "DataflowRunner" scores it and runs TFMA in
            one Beam pipeline (a Dataflow job, cancelled if the step is cancelled) with the same
            outputs: the exact metrics merged from per-slice aggregates (the in-process numbers,
            bit for bit), TFMA's output published under ``evaluation``'s URI by its
            ``tfma/_PUBLISHED.json`` manifest.
        pipeline_options: any other Beam option; names that look like credentials are refused.
        project: Google Cloud project of the Dataflow job (DataflowRunner only).
        dataflow: Dataflow options, as transform's (see cauce.beam_pipelines.DATAFLOW_FIELDS):
            region and temp_location (gs://) required. Checked before any job.
        beam_image: the image Dataflow workers run unless dataflow names an sdk_container_image;
            they need TFMA: the tf image (the training pipeline passes it).

    Returns:
        True when the model is blessed (every bound holds and, with a baseline model, every margin).
    """
    import shutil
    from pathlib import Path

    from cauce.beam_pipelines import DATAFLOW_RUNNER, runner_options, work_uri
    from cauce.components.champion.executor import baseline_model_dir
    from cauce.components.evaluate.executor import REPORT_FILE, run_evaluate

    on_dataflow = runner == DATAFLOW_RUNNER
    result = run_evaluate(
        model_dir=model.path,
        dataset_dir=dataset.path,
        output_dir=evaluation.path,
        split=split,
        slice_features=slice_features,
        thresholds=thresholds,
        # An optional input that is not connected arrives as None.
        champion_model_dir=baseline_model_dir(baseline_model.uri, baseline_model.metadata) if baseline_model else "",
        change_thresholds=change_thresholds,
        slice_thresholds=slice_thresholds,
        runner=runner,
        pipeline_options=runner_options(
            runner, pipeline_options, job_name_prefix="cauce-evaluate", project=project, dataflow=dataflow,
            beam_image=beam_image,
        ) if runner else None,
        work_uri=work_uri(runner, dataflow, "cauce-evaluate"),
        # What Dataflow's workers read and write: the artifacts' URIs (gs://), not the step's paths.
        model_uri=model.uri if on_dataflow else "",
        dataset_uri=dataset.uri if on_dataflow else "",
        output_uri=evaluation.uri if on_dataflow else "",
    )
    for name, value in result["metrics"].items():
        if value is not None:
            metrics.log_metric(name, value)
    roc = result["roc"]  # binary models only
    if roc:
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["threshold"])
    confusion = result["confusion_matrix"]  # classifiers only
    if confusion:
        classification_metrics.log_confusion_matrix(confusion["labels"], confusion["matrix"])
    shutil.copyfile(Path(evaluation.path) / REPORT_FILE, report.path)
    evaluation.metadata.update({
        "blessed": result["blessed"], "reasons": result["reasons"], "split": split, "rows": result["rows"],
        "rows_missing_label": result["rows_missing_label"],
    })
    return bool(result["blessed"])
