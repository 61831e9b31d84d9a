import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajhub_assets.partitions import check_instance_id, missing_keys, model_key, model_name

segment = st.text(alphabet="abcXYZ019.:@+-", min_size=1, max_size=8).filter(lambda s: "__" not in s)
names = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(names)
def test_model_key_is_reversible_and_safe(name):
    key = model_key(name)
    assert model_name(key) == name
    assert not set("/|,=") & set(key)


def test_known_examples():
    assert model_key("anthropic/claude-sonnet-4-5") == "anthropic__claude-sonnet-4-5"
    assert model_name("openrouter__qwen__qwen3-coder") == "openrouter/qwen/qwen3-coder"


@pytest.mark.parametrize("name", ["", "a|b", "a,b", "a//b", "/a", "a/", "a__b", "a b", "a=b"])
def test_bad_model_names(name):
    with pytest.raises(ValueError):
        model_key(name)


def test_instance_ids():
    assert check_instance_id("md-course-builder-code-style") == "md-course-builder-code-style"
    for bad in ("a/b", "a|b", "a,b", ""):
        with pytest.raises(ValueError):
            check_instance_id(bad)


def test_missing_keys_keeps_order_and_never_removes():
    assert missing_keys(["b", "a", "b", "c"], ["c", "z"]) == ["b", "a"]
