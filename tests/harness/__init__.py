"""Test-only harness: the Go-built control plane, PKI, Mooncake master, Prometheus, the operator process and
the process kubelet. Never installed or shipped in images (the package lives under tests/)."""
