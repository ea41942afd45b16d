"""The auth service's rules: pure, no I/O, no gRPC, no driver."""
