"""Probe a gRPC server that serves TLS: grpc.health.v1 Check, exit 0 when SERVING.

Kubernetes' native gRPC probes speak plaintext only, so with `tls.enabled` the pods run this
with the image's own Python and grpcio:

    python grpc_health_probe.py 127.0.0.1:50061 <server name in the certificate>

It trusts /etc/mercato/tls/ca.crt and presents the pod's own certificate (the services ask for
one under mutual TLS).
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TLS = "/etc/mercato/tls/"


def main() -> int:
    target, server_name = sys.argv[1], sys.argv[2]
    with (
        open(TLS + "ca.crt", "rb") as ca,
        open(TLS + "tls.key", "rb") as key,
        open(TLS + "tls.crt", "rb") as cert,
    ):
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    options = [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.RpcError as error:
            print(f"health check failed: {error.code().name}", file=sys.stderr)
            return 1
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
