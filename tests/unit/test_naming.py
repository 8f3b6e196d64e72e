"""Result paths from blob names: safe, deterministic, collision-resistant (property-based)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.naming import MAX_DEPTH, MAX_PATH_CHARS, result_path, safe_stem

DETERMINISTIC = settings(
    derandomize=True, database=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]*")

blob_names = st.one_of(
    st.text(max_size=300),
    st.lists(st.text(max_size=30), max_size=40).map("/".join),
    st.lists(
        st.sampled_from(["..", ".", "", "a", "é", "~", " ", "\\", "x.jpg", "日本"]), max_size=30
    ).map("/".join),
)


@DETERMINISTIC
@given(blob_names)
def test_result_paths_are_safe(name: str) -> None:
    path = result_path(name)
    assert path.endswith(".json")
    assert len(path) <= MAX_PATH_CHARS
    assert path.isascii()
    segments = path.removesuffix(".json").split("/")
    assert 1 <= len(segments) <= MAX_DEPTH
    for segment in segments:
        assert SAFE_SEGMENT.fullmatch(segment), (name, path)
        assert segment not in (".", "..")


@DETERMINISTIC
@given(blob_names)
def test_result_paths_are_deterministic(name: str) -> None:
    assert result_path(name) == result_path(str(name))


@DETERMINISTIC
@given(blob_names, blob_names)
def test_different_names_never_share_a_path(a: str, b: str) -> None:
    if a != b:
        assert result_path(a) != result_path(b)


@DETERMINISTIC
@given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}(/[a-z0-9][a-z0-9._-]{0,20}){0,5}", fullmatch=True))
def test_plain_names_are_kept_readable(name: str) -> None:
    assert result_path(name) == f"{name}.json"


@pytest.mark.parametrize(
    ("name", "expected_prefix"),
    [
        ("photos/2024/cat.jpg", "photos/2024/cat.jpg.json"),
        ("../../etc/passwd", "etc/passwd~"),
        ("/leading/slash.png", "leading/slash.png~"),
        ("café/naïve.jpg", "cafe/naive.jpg~"),
        ("a\\b\\c.jpg", "a/b/c.jpg~"),
        ("dir//double.jpg", "dir/double.jpg~"),
        ("..", "_~"),
        ("", "_~"),
        ("name with spaces?.jpg", "name_with_spaces_.jpg~"),
    ],
)
def test_examples(name: str, expected_prefix: str) -> None:
    assert result_path(name).startswith(expected_prefix)


def test_long_and_deep_names_get_a_hash_suffix() -> None:
    long_name = "x" * 2000
    deep = "/".join(f"d{i}" for i in range(100)) + "/img.jpg"
    for name in (long_name, deep):
        stem = safe_stem(name)
        assert re.search(r"~[0-9a-f]{16}$", stem)
        assert len(result_path(name)) <= MAX_PATH_CHARS
    assert safe_stem(long_name + "a") != safe_stem(long_name + "b")  # same prefix, other hash


def test_tilde_only_comes_from_hashing() -> None:
    # a plain name can never look like a hashed one, so the two families cannot collide
    hashed = safe_stem("é.jpg")
    assert "~" in hashed
    assert safe_stem(hashed) != hashed
