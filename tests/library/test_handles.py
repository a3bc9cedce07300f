"""``core/handles.py``: handles, cache keys and format queries: pure functions, no network."""

from __future__ import annotations

import pytest

from tfhub_cache.errors import InvalidHandleError
from tfhub_cache.handles import cache_key, parse_handle, with_format_query


@pytest.mark.parametrize(
    ("handle", "key"),
    [  # keys quoted in tensorflow/hub issues (#896, #850): proves we hash exactly like tensorflow_hub
        ("https://tfhub.dev/google/yamnet/1", "9616fd04ec2360621642ef9455b84f4b668e219e"),
        ("https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4", "145bb06e"),
    ],
)
def test_cache_key_matches_tensorflow_hub(handle: str, key: str) -> None:
    assert parse_handle(handle).cache_key.startswith(key)


def test_classification_and_normalisation() -> None:
    assert parse_handle("tfhub.dev/google/yamnet/1").text == "https://tfhub.dev/google/yamnet/1"
    assert parse_handle("  https://tfhub.dev/google/yamnet/1 ").kind == "http"
    kaggle = "https://www.kaggle.com/models/google/yamnet/TensorFlow2/yamnet/1"
    assert parse_handle(kaggle).kind == "http"
    assert parse_handle("https://example.com/m.tar.gz").kind == "http"
    assert parse_handle("gs://bucket/models/m.tar.gz").kind == "gcs_archive"
    assert parse_handle("/data/models/m.tgz").kind == "local_archive"
    assert parse_handle("/data/models/saved").kind == "local_dir"
    assert parse_handle("file:///data/models/saved").text == "/data/models/saved"
    # Not normalised beyond the scheme: tensorflow_hub keys the raw string too.
    assert cache_key("https://tfhub.dev/google/yamnet/1/") != cache_key("https://tfhub.dev/google/yamnet/1")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("ftp://host/model", "unsupported scheme 'ftp://'"),
        ("s3://bucket/model.tar.gz", "unsupported scheme 's3://'"),
        ("", "empty"),
        ("https://tfhub.dev/google/yamnet", "ending in a version number"),
        ("https://www.kaggle.com/models/google/yamnet", "Kaggle model handle"),
        ("gs://bucket/models/saved_model_dir", "not a .tar.gz"),
        ("gs://bucket", "names no object"),
        ("https:///nohost", "no host"),
    ],
)
def test_bad_handles_name_the_input(bad: str, fragment: str) -> None:
    with pytest.raises(InvalidHandleError) as err:
        parse_handle(bad)
    assert fragment in str(err.value)


def test_format_query_like_tensorflow_hub() -> None:
    url = with_format_query("https://h/m?extra=abc&tf-hub-format=test", ("tf-hub-format", "compressed"))
    assert url == "https://h/m?extra=abc&tf-hub-format=test&tf-hub-format=compressed"
