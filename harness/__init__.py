"""What the tests and the benchmarks share: a TorchServe on free loopback ports and its logs
(server), the real handler or its model core built as a worker builds them, without TorchServe
(worker), one way to post a request and one check of a prediction (http); and for the tests, the
Docker engine (docker) and the outside tools, whose absence fails a test under CI=true (tools).
Imports the serving code only: nothing from benchmarks or tests."""
