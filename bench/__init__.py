"""`cnnserve bench`: in-process and through-the-server latency benchmarks."""
