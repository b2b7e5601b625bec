"""What the tests and the benchmarks share: a TorchServe on free loopback ports and its logs
(server), the real handler built as a worker builds it, without TorchServe (worker), one way to
post a request and check its answer (http), and the Docker engine and tools the tests need.
Imports the serving code only: nothing from benchmarks or tests."""
