"""What the request log's durability costs per request.

The serving process writes each request's log line with one write(2) before it answers
(cauce.serving.app.RequestLog: nothing answered is lost on SIGKILL). The previous log
appended to a 64 KiB buffered file flushed every 0.2 s, which lost up to 0.2 s of
answered requests on SIGKILL. Both build the same line; this measures the whole
``write`` call of each, one and 32 instances per request, in one process, alternating
rounds so that both see the same machine state. Prints microseconds per request and
the difference.

    .venv/bin/python bench/bench_request_log.py [--requests 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import orjson

from cauce.serving.app import RequestLog

INSTANCE = {
    "trip_miles": 2.5, "trip_seconds": 720, "fare": 11.0, "pickup_hour": 23, "pickup_latitude": 41.89,
    "payment_type": "Credit Card", "company": "Flash Cab", "pickup_community_area": "8",
}  # fmt: skip
PREDICTION = {"label": 1, "score": 0.934812}


class BufferedRequestLog(RequestLog):
    """The previous log: the same line into a 64 KiB buffer; the server flushed it every 0.2 s."""

    def __init__(self, directory, endpoint):
        super().__init__(directory, endpoint)
        self._handle = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115 - closed in close()

    def write(self, deployed_model_id, instances, predictions, response_payload=None):
        dumps = orjson.dumps
        record = {
            "endpoint": self.endpoint,
            "deployed_model_id": deployed_model_id,
            "logging_time": self._logging_time(),
            "request_id": f"{self._request_id_prefix}{next(self._request_ids)}",
            "request_payload": [dumps(instance).decode() for instance in instances],
            "response_payload": response_payload,
        }
        self._handle.write(dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def close(self):
        self._handle.close()
        super().close()


def per_request_us(log: RequestLog, batch: int, requests: int) -> float:
    instances = [INSTANCE] * batch
    predictions = [PREDICTION] * batch
    payload = [orjson.dumps(PREDICTION).decode()] * batch
    started = time.perf_counter()
    for _ in range(requests):
        log.write("1", instances, predictions, payload)
    if isinstance(log, BufferedRequestLog):
        log._handle.flush()  # what the 0.2 s flusher spread over the requests
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round (default 50000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        print(f"{'instances':>9} {'buffered µs':>12} {'durable µs':>11} {'cost µs':>8}")
        for batch in (1, 32):
            requests = args.requests if batch == 1 else args.requests // 8
            times: dict[str, list[float]] = {"buffered": [], "durable": []}
            for _ in range(args.rounds):
                for name, kind in (("buffered", BufferedRequestLog), ("durable", RequestLog)):
                    log = kind(directory, "bench")
                    times[name].append(per_request_us(log, batch, requests))
                    log.close()
            buffered, durable = statistics.median(times["buffered"]), statistics.median(times["durable"])
            print(f"{batch:>9} {buffered:>12.2f} {durable:>11.2f} {durable - buffered:>8.2f}")


if __name__ == "__main__":
    main()
