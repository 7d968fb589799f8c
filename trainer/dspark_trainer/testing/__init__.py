"""Real-part test environments (Kubernetes control plane, Mooncake, Prometheus) for tests and demos."""
