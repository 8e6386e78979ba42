"""Build options TensorRT could silently get wrong: the profile's batch, refused profiles and timing caches.

The builder objects here are *stand-ins* (``tests/fixtures/trt_stand_in.py``) that return what TensorRT returns when
it refuses something; nothing here builds a plan (``test_trt_build.py`` does, on a GPU).
"""

from __future__ import annotations

import logging

import pytest

from edge_inspector.engines import trt_build
from edge_inspector.errors import ConfigError, EngineError
from tests.fixtures.trt_stand_in import BuilderConfigStandIn, BuilderStandIn, network_stand_in


def test_batch_raises_the_maximum_but_tactics_are_tuned_for_batch_one():
    shapes = trt_build._profile_shapes(network_stand_in(image=(-1, 32, 32, 3)), batch=4)
    assert shapes == {"image": ((1, 32, 32, 3), (1, 32, 32, 3), (4, 32, 32, 3))}


def test_fixed_batch_graph_keeps_its_shape_and_refuses_another_batch():
    assert trt_build._profile_shapes(network_stand_in(image=(1, 32, 32, 3)), batch=1) == {
        "image": ((1, 32, 32, 3),) * 3}
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        trt_build._profile_shapes(network_stand_in(image=(1, 32, 32, 3)), batch=4)


def test_a_refused_optimisation_profile_stops_the_build():
    with pytest.raises(EngineError, match="refused the optimisation profile"):
        trt_build._set_profile(BuilderStandIn(), BuilderConfigStandIn(profile_index=-1), {"image": ((1, 3),) * 3})
    trt_build._set_profile(BuilderStandIn(), BuilderConfigStandIn(profile_index=0), {"image": ((1, 3),) * 3})


def test_a_refused_timing_cache_is_replaced_by_a_fresh_one(tmp_path, caplog):
    cache = tmp_path / "orin.timing-cache"
    cache.write_bytes(b"cache from another TensorRT version")
    config = BuilderConfigStandIn(accept_cache="empty only")
    with caplog.at_level(logging.WARNING, logger="edge_inspector.engines.trt_build"):
        trt_build._set_timing_cache(config, cache)
    assert config.cache_blobs == [b"cache from another TensorRT version", b""] and config.cache_set == b""
    assert "timing cache not usable here" in caplog.text


def test_an_accepted_timing_cache_is_used_as_is(tmp_path):
    cache = tmp_path / "orin.timing-cache"
    cache.write_bytes(b"good cache")
    config = BuilderConfigStandIn(accept_cache=True)
    trt_build._set_timing_cache(config, cache)
    assert config.cache_set == b"good cache"


def test_no_timing_cache_at_all_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="could not create an empty timing cache"):
        trt_build._set_timing_cache(BuilderConfigStandIn(accept_cache=False), tmp_path / "absent")
