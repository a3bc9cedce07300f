"""``python -m airflow_provider_tfhub.cli``: the same as ``tfhub-cache`` without the console script."""

from __future__ import annotations

import sys

from airflow_provider_tfhub.cli import main

sys.exit(main())
