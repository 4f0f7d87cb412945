"""The side-by-side benchmark harness behind ``fastbert bench``: implementations (fastbert.bench.harness),
interleaved timing (fastbert.bench.timing) and the ONNX Runtime peer (fastbert.bench.ort_peer)."""
