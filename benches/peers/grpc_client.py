#!/usr/bin/env python3
"""grpc_client.py — a Python grpcio client of lambdarec.v1, generated from our .proto at run time.

Checks grpc.health.v1, reads ModelInfo, streams a few events, then times unary Recommend (k=20) and
Ping calls from one caller and prints req/s and p50/p99 for both (Recommend as a ratio to Ping): how
a non-Rust product service sees the server.

Needs grpcio, grpcio-tools and grpcio-health-checking; from the repository root, e.g.
    python3 -m venv target/peers-venv
    target/peers-venv/bin/pip install grpcio grpcio-tools grpcio-health-checking
Usage (against a running `lambdarec serve`):
    target/peers-venv/bin/python benches/peers/grpc_client.py --target 127.0.0.1:50051 --requests 2000
"""

import argparse
import importlib
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = "lambdarec/v1/recommender.proto"


def generate(out: str):
    """Compiles recommender.proto into `out` and imports the generated modules."""
    include = str(resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", str(ROOT / "proto" / PROTO)]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {PROTO}")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("lambdarec.v1.recommender_pb2")
    pb2_grpc = importlib.import_module("lambdarec.v1.recommender_pb2_grpc")
    return pb2, pb2_grpc


def percentile(sorted_values, p):
    return sorted_values[min(int(len(sorted_values) * p), len(sorted_values) - 1)]


def timed(n, call):
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    latencies.sort()
    return n / wall, percentile(latencies, 0.5), percentile(latencies, 0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as out:
        pb2, pb2_grpc = generate(out)
        channel = grpc.insecure_channel(args.target)
        grpc.channel_ready_future(channel).result(timeout=10)

        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "lambdarec.v1.Recommender"]:
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            print(f"health {service or '(server)'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")

        stub = pb2_grpc.RecommenderStub(channel)
        info = stub.ModelInfo(pb2.ModelInfoRequest(), timeout=5)
        print(f"model {info.name} version {info.version}: {info.n_items} items, hidden {info.hidden}, "
              f"{info.dtype} on {info.device}")

        # Popular items (an empty session's answer) become the events of a test session.
        popular = [s.item_id for s in stub.Recommend(pb2.RecommendRequest(session_id="py-empty", k=5)).items]
        events = [pb2.SessionEvent(session_id="py-1", item_id=item, client_seq=i) for i, item in enumerate(popular[:3])]
        # x-session-id on every call about a session: a proxy in front of replicas routes by it
        # (deploy/haproxy); a single server ignores it.
        route = [("x-session-id", "py-1")]
        acks = list(stub.StreamEvents(iter(events), timeout=10, metadata=route))
        print("acks:", [(a.client_seq, a.applied, a.session_events) for a in acks])
        try:
            stub.Recommend(pb2.RecommendRequest(session_id=""), timeout=5)
        except grpc.RpcError as e:
            print(f"empty session id -> {e.code().name}: {e.details()}")

        def recommend(i):
            r = stub.Recommend(pb2.RecommendRequest(session_id="py-1", k=20), timeout=5, metadata=route)
            assert len(r.items) == 20 and not set(popular[:3]) & {s.item_id for s in r.items}

        def ping(i):
            stub.Ping(pb2.PingRequest(), timeout=5)

        n = args.requests
        for name, call in [("ping", ping), ("recommend-k20", recommend)]:
            timed(min(n, 200), call)  # warm-up
        ping_rate, ping_p50, ping_p99 = timed(n, ping)
        rec_rate, rec_p50, rec_p99 = timed(n, recommend)
        print(f"{'case':<16}{'req/s':>10}{'p50 µs':>10}{'p99 µs':>10}")
        print(f"{'ping':<16}{ping_rate:>10.0f}{ping_p50 * 1e6:>10.0f}{ping_p99 * 1e6:>10.0f}")
        print(f"{'recommend-k20':<16}{rec_rate:>10.0f}{rec_p50 * 1e6:>10.0f}{rec_p99 * 1e6:>10.0f}")
        print(f"recommend vs ping: {rec_rate / ping_rate:.2f}x req/s, {rec_p50 / ping_p50:.2f}x p50 "
              f"({n} sequential calls each, one caller)")


if __name__ == "__main__":
    main()
