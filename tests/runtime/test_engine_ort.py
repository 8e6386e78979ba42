"""OrtEngine: real ONNX Runtime on the tiny bundle; refusal of missing, corrupt and mismatched bundles."""

import numpy as np
import onnx
import pytest

from edge_inspector.bundle.store import load_bundle, write_bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import Engine
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.engines.select import open_engine
from edge_inspector.errors import BundleError, EngineError
from tests.fixtures.bundles import make_tiny_bundle, tiny_graph


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_tiny_bundle(tmp_path / "bundle", width=48, height=32).path)


def test_infers_map_and_score_at_model_size(bundle):
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1, graph_optimization="basic"))
    assert isinstance(engine, Engine)
    image = np.full((32, 48, 3), 128, np.uint8)
    image[10:14, 5:40] = 20
    out = engine.infer(image)
    assert out.anomaly_map.shape == (32, 48) and out.anomaly_map.dtype == np.float32
    assert out.score == pytest.approx(float(out.anomaly_map.max()))
    assert out.score > bundle.manifest.thresholds.image
    described = engine.describe()
    assert described["backend"] == "onnxruntime" and described["intra_op_threads"] == "1"
    assert described["graph_optimization"] == "basic" and "CPUExecutionProvider" in described["providers"]
    assert described["spin_wait"] == "false"  # idle threads sleep unless the config asks them to spin
    spinning = OrtEngine(bundle, EngineSettings(intra_op_threads=2, spin_wait=True))
    assert spinning.describe()["spin_wait"] == "true"
    np.testing.assert_array_equal(spinning.infer(image).anomaly_map, out.anomaly_map)


def test_wrong_image_shape_is_an_engine_error(bundle):
    engine = OrtEngine(bundle)
    with pytest.raises(EngineError, match=r"uint8 \(32, 48, 3\)"):
        engine.infer(np.zeros((48, 32, 3), np.uint8))
    with pytest.raises(EngineError, match="float32"):
        engine.infer(np.zeros((32, 48, 3), np.float32))


def test_open_engine_auto_gives_onnxruntime_and_warms_up(bundle):
    engine = open_engine(bundle, EngineSettings(backend="auto", warmup_runs=1))
    assert engine.name == "onnxruntime"
    engine.close()


def test_missing_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_corrupt_graph_is_refused_even_without_hash_check(bundle):
    bundle.onnx_path.write_bytes(b"\x08\x07 this is not protobuf \xff\xff\xff")
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_bundle(bundle.path)
    with pytest.raises(BundleError, match="corrupt"):
        OrtEngine(load_bundle(bundle.path, verify_hash=False))


def test_corrupt_manifest_is_refused(bundle):
    (bundle.path / "manifest.yaml").write_text("model_id: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle.path)


def _rewrite(bundle, tmp_path, graph=None, **manifest_changes):
    """A new bundle from ``bundle`` with another graph and/or manifest fields changed."""
    manifest = bundle.manifest.model_copy(deep=True)
    for dotted, value in manifest_changes.items():
        target = manifest
        *parents, last = dotted.split("__")
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value)
    path = tmp_path / "graph.onnx"
    onnx.save(graph if graph is not None else onnx.load(str(bundle.onnx_path)), path)
    return load_bundle(write_bundle(tmp_path / "rewritten", path, manifest).path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input__width": 64}, r"input shape \[1, 32, 48, 3\] does not match the manifest's NHWC \[1, 32, 64, 3\]"),
        ({"input__name": "pixels"}, "do not match the manifest's single input 'pixels'"),
        ({"outputs__score": "image_score"}, r"lacks output\(s\) \['image_score'\]"),
        ({"graph__opset": 13}, "uses opset 17 but the manifest says 13"),
    ],
)
def test_manifest_that_does_not_match_the_graph_is_refused(bundle, tmp_path, changes, message):
    with pytest.raises(BundleError, match=message):
        OrtEngine(_rewrite(bundle, tmp_path, **changes))


def test_float_input_graph_is_refused(bundle, tmp_path):
    graph = tiny_graph(48, 32)
    graph.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    graph.graph.node[0].attribute[0].i = onnx.TensorProto.FLOAT
    with pytest.raises(BundleError, match=r"is tensor\(float\), the manifest says uint8"):
        OrtEngine(_rewrite(bundle, tmp_path, graph=graph))



def test_a_closed_engine_refuses_work(bundle):
    engine = OrtEngine(bundle)
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.infer(np.zeros((32, 48, 3), np.uint8))


def test_int4_weights_are_stored_small_and_run_widened_to_int8(tmp_path):
    import onnxruntime as ort

    from edge_inspector.engines.ort_rewrites import widen_int4_initializers
    from tests.fixtures.trt_graphs import make_conv_bundle

    bundle = make_conv_bundle(tmp_path / "b", int4_weights=True)
    stored = onnx.load(str(bundle.onnx_path))
    assert any(t.data_type == onnx.TensorProto.INT4 for t in stored.graph.initializer)  # the file stays small
    image = bundle.calibration_images()[0]
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1))
    got = engine.infer(image)
    widen_int4_initializers(stored)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(stored.SerializeToString(), options, providers=["CPUExecutionProvider"])
    want_map, want_score = session.run(None, {"image": image[None]})
    # conv1's codes and zero point; ORT left to itself would dequantize them and run a float conv
    assert engine.describe()["int4_weights_widened"] == "2"
    np.testing.assert_array_equal(got.anomaly_map, want_map[0, 0])
    assert got.score == pytest.approx(float(want_score.reshape(-1)[0]), rel=1e-6)


def test_graph_metadata_names_the_optimizers_to_leave_out():
    from edge_inspector.engines.ort_rewrites import METADATA_DISABLED_OPTIMIZERS, ort_disabled_optimizers

    model = tiny_graph(16, 16)
    assert ort_disabled_optimizers(model) == []
    model.metadata_props.add(key=METADATA_DISABLED_OPTIMIZERS, value="QDQPropagationTransformer")
    assert ort_disabled_optimizers(model) == ["QDQPropagationTransformer"]


def _config(options, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ORT's answer for a key that was never set
        return None


def test_pool_threads_sleep_by_default_and_stop_spinning_after_runs_that_spun():
    from edge_inspector.engines.ort import session_options

    quiet = session_options(EngineSettings())
    assert _config(quiet, "session.intra_op.allow_spinning") == "0"
    assert _config(quiet, "session.force_spinning_stop") is None
    spinning = session_options(EngineSettings(spin_wait=True, intra_op_threads=2, graph_optimization="basic"))
    assert _config(spinning, "session.intra_op.allow_spinning") == "1"
    assert _config(spinning, "session.force_spinning_stop") == "1"
    assert spinning.intra_op_num_threads == 2


def test_one_session_factory_rewrites_a_copy_and_refuses_a_bad_graph():
    from edge_inspector.engines.ort import load_session

    model = tiny_graph(16, 16)
    before = model.SerializeToString()
    loaded = load_session(model, EngineSettings(intra_op_threads=1))
    assert model.SerializeToString() == before  # the caller's graph is left as it was
    assert loaded.load_rewrites == {"int4_widened": 0, "integer_matmuls": 0, "blocked_dq_folded": 0}
    assert [i.name for i in loaded.session.get_inputs()] == [model.graph.input[0].name]
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BundleError, match="ONNX Runtime cannot load the graph"):
        load_session(model)
