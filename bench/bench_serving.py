"""Online serving on loopback: our server against `mlflow models serve` and a
constant-JSON floor, measured with wrk in one run.

    python bench/bench_serving.py [--duration S] [--soak S]

One scikit-learn model is trained the way the pipeline does it (the real
transform and train executors on generated taxi trips), then three servers are
measured with the same request bodies (1 and 32 instances) at concurrency
1/8/32 (`wrk -t1 -cN --latency`):

* ours     `python -m cauce.serving --model-dir ... --request-log-dir ...`:
           the fitted transform applied per request, request logging on, as in
           production;
* mlflow   `mlflow models serve --env-manager local` of the same estimator type
           logged the way MLflow users deploy it: a sklearn Pipeline of
           ColumnTransformer(OneHot + StandardScaler) + LogisticRegression, fitted
           on a DataFrame of the same training rows, with an inferred signature;
* floor    uvicorn (same HTTP stack and socket options as ours) with a raw ASGI
           app that reads the body and answers a constant JSON: what no Python
           model server on this stack can beat.

Ratios (ours/mlflow, ours/floor) are computed per cell from numbers taken in the
same run. With `--soak S`, wrk then saturates our server for S seconds and the
run fails unless every response was 2xx with no socket errors.

Load generator and servers share the machine (one wrk thread, one server
process): absolute numbers include that contention; the ratios are what to
compare across machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

CONCURRENCY = [1, 8, 32]
BATCHES = [1, 32]
TRAIN_ROWS = 20_000
HYPERPARAMETERS = {"model_type": "logistic_regression", "max_iter": 500}

# wrk prints its own summary; done() adds one machine-readable line we parse.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE"), "rb"):read()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"timeout\\": %d, \\"status\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""

# The floor: same uvicorn config and TCP_NODELAY socket as cauce.serving.server,
# an ASGI app that drains the body (as a real server must) and answers constant bytes.
FLOOR_SERVER = textwrap.dedent(
    """
    import socket, sys
    import uvicorn

    BODY = open(sys.argv[2], "rb").read()
    HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ---- the model, twice -----------------------------------------------------------


def train_cauce_model(work: Path) -> tuple[str, str]:
    """(raw dataset dir, model dir) from the real transform and train executors."""
    from cauce import data
    from cauce.artifacts import atomic_dir
    from cauce.components.train.executor import run_train
    from cauce.components.transform.executor import run_transform
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC, generate_taxi_trips

    table = generate_taxi_trips(TRAIN_ROWS, 7)
    cut = int(TRAIN_ROWS * 0.75)
    with atomic_dir(work / "raw") as out:
        rows = {
            "train": data.write_split(out, "train", table.slice(0, cut)),
            "eval": data.write_split(out, "eval", table.slice(cut)),
        }
        data.write_schema(out, table.schema, rows)
    raw = str(work / "raw")
    run_transform(raw, DEMO_LABEL, DEMO_NUMERIC, DEMO_CATEGORICAL, str(work / "transformed"), str(work / "transform"))
    run_train(str(work / "transformed"), str(work / "transform"), str(work / "model"), dict(HYPERPARAMETERS))
    return raw, str(work / "model")


def save_mlflow_model(raw: str, work: Path) -> str:
    """The same estimator type as an MLflow user ships it: a sklearn Pipeline that
    does its preprocessing on a DataFrame, saved with an inferred signature."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from cauce import data
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC

    frame = data.read_split(raw, "train", columns=DEMO_NUMERIC + DEMO_CATEGORICAL + [DEMO_LABEL]).to_pandas()
    features, label = frame[DEMO_NUMERIC + DEMO_CATEGORICAL], frame[DEMO_LABEL].astype(int)
    preprocess = ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), DEMO_NUMERIC),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", max_categories=101)),
                    ]
                ),
                DEMO_CATEGORICAL,
            ),
        ]
    )
    pipeline = Pipeline([("preprocess", preprocess), ("model", LogisticRegression(max_iter=HYPERPARAMETERS["max_iter"]))])
    pipeline.fit(features, label)
    path = work / "mlflow-model"
    mlflow.sklearn.save_model(
        pipeline,
        str(path),
        signature=infer_signature(features, pipeline.predict(features)),
        # mlflow 3's default format needs skops, which a serving venv rarely has; pickle is
        # what mlflow 2 wrote and what most deployed sklearn models are.
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
        pip_requirements=["scikit-learn"],  # skip requirement inference: it re-loads the model in a subprocess
    )
    return str(path)


# ---- servers --------------------------------------------------------------------


class Server:
    """A server process on 127.0.0.1:port, in its own process group so that
    stopping it also stops anything it started (mlflow execs uvicorn)."""

    def __init__(self, name: str, command: list[str], port: int, url_path: str, env: dict | None = None):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}{url_path}"
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def wait_ready(self, body: bytes, timeout: float = 120.0) -> bytes:
        """Block until a real prediction request succeeds; return its response."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                status, answer = post(self.url, body, timeout=5)
            except OSError:
                time.sleep(0.2)
                continue
            if status != 200:
                raise RuntimeError(f"{self.name} answered {status}: {answer[:500]!r}")
            return answer
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_ours(model_dir: str, log_dir: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "cauce.serving", "--model-dir", model_dir, "--port", str(port)]
    if log_dir:
        command += ["--request-log-dir", log_dir, "--endpoint", "bench"]
    return Server("ours", command, port, "/predict")


def start_mlflow(model_path: str) -> Server:
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", model_path, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    return Server("mlflow", command, port, "/invocations", env=env)


def start_floor(script: Path, body_file: Path) -> Server:
    port = free_port()
    return Server("floor", [sys.executable, str(script), str(port), str(body_file)], port, "/predict")


# ---- load -----------------------------------------------------------------------


def wrk(url: str, body_file: Path, script: Path, connections: int, seconds: float) -> dict:
    """One bounded wrk run; returns req/s, p50/p99 (ms) and error counts."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency",
        "-s", str(script), url,
    ]
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    match = re.search(r"^BENCH (\{.*\})$", done.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    result = json.loads(match.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["p50_ms"], result["p99_ms"] = result["p50_us"] / 1000, result["p99_us"] / 1000
    result["errors"] = result["non_2xx"] + sum(result[k] for k in ("connect", "read", "write", "timeout"))
    return result


def measure_cell(server: Server, body_file: Path, script: Path, connections: int, seconds: float) -> dict:
    wrk(server.url, body_file, script, connections, 1)  # warm-up: open connections, fill caches
    r = wrk(server.url, body_file, script, connections, seconds)
    print(
        f"  {server.name:<12} batch {body_file.stem.removeprefix('body-'):>2} c={connections:<2} {r['rps']:>8.0f} req/s "
        f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms errors {r['errors']}",
        file=sys.stderr,
        flush=True,
    )
    return r


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured cell (default 10)")
    parser.add_argument("--soak", type=float, default=0.0, help="then saturate our server this long (0: no soak)")
    parser.add_argument("--no-log-variant", action="store_true", help="also measure ours with request logging off")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")

    with tempfile.TemporaryDirectory(prefix="cauce-bench-serving-") as tmp:
        work = Path(tmp)
        os.environ["CAUCE_HOME"] = str(work / "home")
        print("training the model (real transform + train executors) ...", file=sys.stderr, flush=True)
        raw, model_dir = train_cauce_model(work)
        mlflow_model = save_mlflow_model(raw, work)

        from cauce.components.deploy.executor import smoke_instances_from

        instances = smoke_instances_from(raw, "eval", model_dir, rows=max(BATCHES))
        bodies = {}
        for batch in BATCHES:
            bodies[batch] = work / f"body-{batch}.json"
            bodies[batch].write_text(json.dumps({"instances": instances[:batch]}))
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        floor_script = work / "floor.py"
        floor_script.write_text(FLOOR_SERVER)

        # All servers run at once (idle ones cost nothing) and every cell measures them
        # back to back, so each ratio compares numbers taken within seconds of each other
        # even when something else on the machine changes its load during the run.
        servers: dict[str, tuple[Server, dict[int, Path]]] = {}
        try:
            variants = [("ours", str(work / "request-logs"))]
            variants += [("ours no-log", "")] if args.no_log_variant else []
            answers = {}
            for name, log_dir in variants:
                server = start_ours(model_dir, log_dir)
                server.name = name
                answers = {batch: server.wait_ready(body.read_bytes()) for batch, body in bodies.items()}
                servers[name] = (server, bodies)
            server = start_mlflow(mlflow_model)
            mlflow_answer = server.wait_ready(bodies[1].read_bytes())
            print(f"mlflow answers {mlflow_answer[:80]!r}", file=sys.stderr)
            servers["mlflow"] = (server, bodies)
            # The floor answers exactly what ours answered to each body, so response sizes match.
            for batch, body_file in bodies.items():
                answer_file = work / f"answer-{batch}.json"
                answer_file.write_bytes(answers[batch])
                server = start_floor(floor_script, answer_file)
                server.name = f"floor ({batch})"
                server.wait_ready(body_file.read_bytes())
                servers[f"floor-{batch}"] = (server, {batch: body_file})

            results: dict[str, dict] = {name: {} for name, _ in variants}
            results.update(mlflow={}, floor={})
            load = [os.getloadavg()[0]]
            for batch in BATCHES:
                for connections in CONCURRENCY:
                    for name, (server, server_bodies) in servers.items():
                        if batch in server_bodies:
                            key = "floor" if name.startswith("floor") else name
                            cell = measure_cell(server, server_bodies[batch], script, connections, args.duration)
                            results[key][batch, connections] = cell
                    load.append(os.getloadavg()[0])
        finally:
            for server, _ in servers.values():
                server.stop()

        soak = None
        if args.soak:
            server = start_ours(model_dir, str(work / "soak-logs"))
            try:
                server.wait_ready(bodies[1].read_bytes())
                print(f"soak: {args.soak:.0f} s at c=32 against ours ...", file=sys.stderr, flush=True)
                soak = wrk(server.url, bodies[1], script, 32, args.soak)
                try:  # still answering after the soak?
                    alive = server.wait_ready(bodies[1].read_bytes(), timeout=5) is not None
                except RuntimeError:
                    alive = False
            finally:
                server.stop()
            logged = sum(1 for f in (work / "soak-logs").glob("*.jsonl") for _ in open(f))

        report(results, args, soak, locals().get("alive"), locals().get("logged"), load)
        if soak is not None and soak["errors"]:
            raise SystemExit(1)


def report(results: dict, args, soak: dict | None, alive, logged, load: list[float]) -> None:
    print(f"serving benchmark, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"wrk -t1 --latency, {args.duration:.0f} s per cell after 1 s warm-up, loopback; wrk and the server share "
        "the machine's cores. ours: request logging on."
    )
    print(f"1-min load average during the cells: {min(load):.1f} to {max(load):.1f} (2.0 = wrk + one busy server)")
    servers = [name for name in results if name not in ("floor",)]
    header = f"{'server':<12}{'batch':>6}{'conc':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    header += f"{'ours/mlflow':>13}{'ours/floor':>12}"
    print(header)
    for batch in BATCHES:
        for connections in CONCURRENCY:
            ours = results["ours"][batch, connections]["rps"]
            for name in servers + ["floor"]:
                r = results[name][batch, connections]
                line = f"{name:<12}{batch:>6}{connections:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
                if name == "ours":
                    mlflow_rps = results["mlflow"][batch, connections]["rps"]
                    # mlflow can answer nothing within wrk's timeout at c=32 on a loaded machine
                    line += f"{ours / mlflow_rps:>12.1f}x" if mlflow_rps else f"{'n/a':>13}"
                    line += f"{ours / results['floor'][batch, connections]['rps']:>11.0%}"
                print(line)
    single = results["ours"][1, 1]
    worst_mlflow = min(
        results["ours"][k]["rps"] / results["mlflow"][k]["rps"] for k in results["ours"] if results["mlflow"][k]["rps"]
    )
    floor_ratio = {k: results["ours"][k]["rps"] / results["floor"][k]["rps"] for k in results["ours"]}
    worst_floor = min(floor_ratio.values())
    worst_floor_single = min(v for (batch, _), v in floor_ratio.items() if batch == 1)
    print(
        f"goals: p50 single instance c=1 {single['p50_ms']:.2f} ms (<= 0.5: {'met' if single['p50_ms'] <= 0.5 else 'MISSED'}); "
        f"throughput vs mlflow, worst cell {worst_mlflow:.1f}x (>= 10x: {'met' if worst_mlflow >= 10 else 'MISSED'}); "
        f"vs floor, worst single-instance cell {worst_floor_single:.0%}, worst cell {worst_floor:.0%} "
        f"(>= 50%: {'met' if worst_floor >= 0.5 else 'MISSED'})"
    )
    if soak is not None:
        verdict = "PASS" if soak["errors"] == 0 and alive else "FAIL"
        print(
            f"soak {verdict}: {args.soak:.0f} s at c=32, batch 1, ours with logging: {soak['requests']} requests, "
            f"{soak['rps']:.0f} req/s, p50 {soak['p50_ms']:.2f} ms, p99 {soak['p99_ms']:.2f} ms, "
            f"non-2xx {soak['non_2xx']}, socket errors connect {soak['connect']} read {soak['read']} "
            f"write {soak['write']} timeout {soak['timeout']}; {logged} request-log lines (wrk's count + readiness checks + requests in flight at the end); server answered afterwards: {alive}"
        )


if __name__ == "__main__":
    main()
