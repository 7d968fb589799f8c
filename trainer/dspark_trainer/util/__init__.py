"""Small dependency-free helpers shared by the runtime, the local pipeline and the test environments."""
