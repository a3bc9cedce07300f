"""The suite's warning filters (``[tool.pytest.ini_options] filterwarnings``): ours fail, others are shown.

A deprecation attributed to ``tfhub_cache`` or ``airflow_provider_tfhub`` (raised there, or a
deprecated API called from there) is an error, so it cannot slip in unseen; a third-party one is not
ignored wholesale (only the named ones are), so it shows in the summary.
"""

from __future__ import annotations

import warnings

import pytest

WARN = "import warnings\nwarnings.warn('this API is going away', {category})\n"


def warn_from(module: str, category: type[Warning]) -> None:
    """Emit ``category`` as code of ``module`` would (the filters match the emitting module's name)."""
    exec(compile(WARN.format(category=category.__name__), f"<{module}>", "exec"), {"__name__": module})


@pytest.mark.parametrize("module", ["tfhub_cache.cache.staging", "airflow_provider_tfhub.operators.stage"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_deprecation_in_our_packages_is_an_error(module: str, category: type[Warning]) -> None:
    with pytest.raises(category, match="going away"):
        warn_from(module, category)


def test_a_third_party_deprecation_is_shown_not_raised_nor_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:  # the filters in force stay as they are
        warn_from("somebody_else.module", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["this API is going away"]
