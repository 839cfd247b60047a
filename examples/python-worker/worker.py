"""An emit worker in Python, speaking the core's gRPC WorkerService directly.

Stubs are generated from the repository's proto/ at start-up with
grpcio-tools, so the .proto files stay the single source of truth.

    pip install -r requirements.txt
    python worker.py --target 127.0.0.1:50051 --space SPACE_ID --key emit_... [--jobs N]

It opens one session (capacity 4), and for each job pushed to it: acks,
reports progress, then completes with {"doubled": payload["n"] * 2}.
With --jobs N it drains and exits after N jobs.
"""

import argparse
import importlib
import json
import pathlib
import queue
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    out = pathlib.Path(tempfile.mkdtemp(prefix="emit-stubs-"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    files = [str(p) for p in (PROTO_DIR / "emit" / "v1").glob("*.proto")]
    status = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if status != 0:
        sys.exit(f"protoc failed ({status})")
    sys.path.insert(0, str(out))
    pb = importlib.import_module("emit.v1.worker_service_pb2")
    rpc = importlib.import_module("emit.v1.worker_service_pb2_grpc")
    job_pb = importlib.import_module("emit.v1.job_pb2")
    return pb, rpc, job_pb


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--space", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=0, help="exit after this many jobs (0: run forever)")
    args = parser.parse_args()
    pb, rpc, job_pb = load_stubs()

    outgoing = queue.Queue()
    outgoing.put(pb.OpenSessionRequest(hello=pb.WorkerHello(space_id=args.space, capacity=args.capacity)))

    def requests():
        while True:
            message = outgoing.get()
            if message is None:
                return
            yield message

    next_id = iter(range(1, 1 << 62))

    def report(job_id, **action):
        outgoing.put(pb.OpenSessionRequest(report=pb.WorkerReport(request_id=next(next_id), job_id=job_id, **action)))

    stub = rpc.WorkerServiceStub(grpc.insecure_channel(args.target))
    done = 0
    for response in stub.OpenSession(requests(), metadata=[("x-api-key", args.key)]):
        kind = response.WhichOneof("message")
        if kind == "assignment":
            job = response.assignment
            payload = json.loads(job.payload_json) if job.HasField("payload_json") else {}
            report(job.id, ack=pb.ReportAck())
            report(job.id, progress=pb.ReportProgress(progress_json=json.dumps({"percent": 50, "message": "doubling"})))
            result = {"doubled": payload.get("n", 0) * 2, "worker": "python"}
            report(job.id, complete=pb.ReportComplete(result_json=json.dumps(result)))
        elif kind == "result":
            if response.result.code != 0:
                print(f"report refused: {response.result.message}", file=sys.stderr)
            elif response.result.job.status == job_pb.JOB_STATUS_COMPLETED:
                done += 1
                if args.jobs and done == args.jobs:
                    outgoing.put(pb.OpenSessionRequest(drain=pb.WorkerDrain()))
        elif kind == "cancellation":
            print(f"cancelled {response.cancellation.job_id}: {response.cancellation.reason}", file=sys.stderr)
        elif kind == "drained":
            break
    outgoing.put(None)
    print(f"completed {done} jobs")


if __name__ == "__main__":
    main()
