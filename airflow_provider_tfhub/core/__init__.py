"""Framework-free core: handles, cache layout, locks, transfer, extraction and storage backends.

Nothing under this package imports Airflow or TensorFlow; the Airflow layer and the CLI are thin
shells around :func:`airflow_provider_tfhub.core.staging.stage`.
"""

from __future__ import annotations
