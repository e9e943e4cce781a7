#!/usr/bin/env python3
"""reflection_client.py — lists a lambdarec server's services and methods through server reflection,
as Python tools (grpcio-reflection speaks only grpc.reflection.v1alpha) and older grpcurl/Postman do.

Needs grpcio and grpcio-reflection; from the repository root, e.g.
    python3 -m venv target/peers-venv
    target/peers-venv/bin/pip install grpcio grpcio-reflection
Usage (against a running `lambdarec serve`):
    target/peers-venv/bin/python benches/peers/reflection_client.py --target 127.0.0.1:50051
Exits 1 when lambdarec.v1.Recommender or one of its methods cannot be resolved.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

EXPECTED = {"StreamEvents", "Recommend", "Score", "GetSession", "DeleteSession", "ModelInfo",
            "Reload", "Ping"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    args = p.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        print("services:", ", ".join(sorted(services)))
        pool = DescriptorPool(db)
        svc = pool.FindServiceByName("lambdarec.v1.Recommender")
        methods = {m.name: m for m in svc.methods}
        for name, m in methods.items():
            print(f"  {name}({m.input_type.full_name}) -> {m.output_type.full_name}")
        missing = EXPECTED - methods.keys()
        if missing:
            print("missing methods:", ", ".join(sorted(missing)), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
