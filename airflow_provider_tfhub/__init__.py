"""Apache Airflow provider that stages TensorFlow Hub models into a tensorflow_hub-compatible cache.

Importing this package is cheap on purpose: it imports neither Airflow nor TensorFlow, so the
``tfhub-cache`` CLI and every Airflow component that reads provider info stay small and fast.
"""

from __future__ import annotations

__version__ = "0.2.0"
"""The one place the version is written: pyproject.toml and get_provider_info read it."""
