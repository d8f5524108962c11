"""`python -m cauce.serving`: the serving container's entrypoint (reads AIP_* variables)."""

import argparse

from cauce.serving.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cauce.serving", description=__doc__)
    parser.add_argument("--model-dir", default="", help="model directory or gs:// URI (default: $AIP_STORAGE_URI)")
    parser.add_argument("--host", default="", help="bind address (default: $CAUCE_SERVE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: $AIP_HTTP_PORT or 8080)")
    parser.add_argument("--model-name", default="model", help="name in KServe V1 routes")
    parser.add_argument("--request-log-dir", default="", help="write request logs here (JSONL)")
    parser.add_argument("--endpoint", default="local", help="endpoint name written in request logs")
    parser.add_argument(
        "--deployed-model-id", default="", help="id of the model's deployment (default: $AIP_DEPLOYED_MODEL_ID)"
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="enable the admin routes (deploy, undeploy, traffic split) for loopback clients holding the "
        "token in $CAUCE_SERVING_ADMIN_TOKEN; the local deploy step's canary uses them",
    )
    args = parser.parse_args()
    serve(
        args.model_dir, args.host, args.port, args.model_name, args.request_log_dir, args.endpoint,
        args.deployed_model_id, args.admin,
    )


if __name__ == "__main__":
    main()
