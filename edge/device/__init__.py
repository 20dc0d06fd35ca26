"""The device's plumbing, under every stage: settings, model files and the TFLite
runtime, supervision of threads, health counters and systemd, logging with secrets
scrubbed. Imports nothing from the layers above it."""
