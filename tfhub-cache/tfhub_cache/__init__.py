"""Stage TensorFlow Hub models into a cache that tensorflow_hub itself can use.

The package is laid out as the pipeline a model goes through: ``fetch`` (HTTP with the TF Hub
protocol, ranged parts, mirrors, update checks), ``archive`` (inflate and safe extraction),
``storage`` (local directories and ``gs://``), ``cache`` (layout, locks, revisions, staging,
inventory), then ``export`` (TF Serving) and ``loading`` (TensorFlow, only when a model is loaded).
Nothing here imports Airflow; TensorFlow is imported only by :mod:`tfhub_cache.loading`.
"""

from __future__ import annotations

from tfhub_cache.cache.pull import pull

__all__ = ["pull"]

__version__ = "0.2.0"
"""The version of both distributions (tfhub-cache and airflow-provider-tfhub): one release."""
