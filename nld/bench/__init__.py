"""`nld bench`: SPEED-Bench-style measurement of every decoding mode across concurrency."""
