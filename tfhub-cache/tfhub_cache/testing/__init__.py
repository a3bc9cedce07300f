"""Test, demo and benchmark infrastructure: a fake TF Hub server, SavedModel builders, a GCS emulator.

It ships with the package so that the provider's own tests, the docker demo and the benchmarks (and users
who want to test their DAGs offline) all exercise the very same fakes. Nothing here is imported by the
provider at runtime; ``hub`` and ``gcs_emulator`` use only the stdlib, and ``models`` imports
TensorFlow lazily inside its functions.
"""
