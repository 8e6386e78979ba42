"""The automatic input size (edge_inspector.model.input_size) and the header size reader (data.image_sizes)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_inspector.data.folders import read_image
from edge_inspector.data.image_sizes import read_image_size, read_image_sizes
from edge_inspector.errors import ConfigError, DataError
from edge_inspector.model.input_size import SizeStatistics, choose_input_size
from edge_inspector.model.presets import ModelSpec, load_preset

LITE = load_preset("haloae-lite").model
PAPER = load_preset("haloae-paper").model


def spec_with(*overrides: str, preset: str = "haloae-lite") -> ModelSpec:
    return load_preset(preset, list(overrides)).model


@pytest.mark.parametrize("spec", [LITE, PAPER], ids=["lite", "paper"])
def test_square_images_keep_the_presets_256x256(spec):
    choice = choose_input_size([(512, 512), (600, 600), (400, 400)], spec)
    assert (choice.width, choice.height, choice.source) == (256, 256, "auto")
    assert choice.cost == 1.0 and choice.warnings == ()


def test_elongated_parts_keep_their_aspect_near_the_budget():
    choice = choose_input_size([(200, 500), (210, 520), (190, 480)], LITE)  # 1:2.5, portrait
    assert (choice.width, choice.height) == (192, 448)  # aspect 2.33, the closest that fits within the budget band
    turned = choose_input_size([(500, 200)], LITE)
    assert (turned.width, turned.height) == (448, 192)
    assert "2.50" in choice.reason and "model.input_pixels" in choice.reason
    assert math.isclose(choice.cost, 192 * 448 / 65536)


@pytest.mark.parametrize("preset", ["haloae-lite", "haloae-paper"])
@pytest.mark.parametrize("aspect", [0.1, 0.25, 0.5, 0.8, 1.0, 1.17, 1.5, 2.5, 4.0, 10.0])
@pytest.mark.parametrize("budget", [128 * 128, 256 * 256, 512 * 512])
def test_every_choice_fits_the_network_and_the_budget_band(preset, aspect, budget):
    spec = spec_with(f"model.input_pixels={budget}", preset=preset)
    choice = choose_input_size([(1000, round(1000 * aspect))], spec)
    ModelSpec(**{**spec.model_dump(), "width": choice.width, "height": choice.height})  # validates: grid and blocks
    assert abs(math.log(choice.width * choice.height / budget)) <= math.log(math.sqrt(2)) + 1e-9
    # No other fitting size within the band keeps the aspect better.
    achieved = abs(math.log(choice.height / choice.width / aspect))
    sides = [s for s in range(1, 4000) if spec.fits(s)]
    better = [(w, h) for w in sides for h in sides
              if abs(math.log(w * h / budget)) <= math.log(math.sqrt(2)) and abs(math.log(h / w / aspect)) < achieved - 1e-9]
    assert better == []


def test_paper_preset_sides_follow_its_stem_and_blocks():
    choice = choose_input_size([(200, 500)], PAPER)
    assert (choice.width, choice.height) == (160, 400)  # 4 px cells, 5x5 valid stem (-4), 12-cell blocks: 48k + 16


def test_pixel_budget_is_a_setting():
    assert (lambda c: (c.width, c.height))(choose_input_size([(100, 100)], spec_with("model.input_pixels=262144"))) \
        == (512, 512)
    tiny = choose_input_size([(100, 100)], spec_with("model.input_pixels=1000"))
    assert (tiny.width, tiny.height) == (64, 64) and "none within" in tiny.reason


def test_a_side_the_user_set_is_kept_and_the_other_follows_the_aspect():
    by_width = choose_input_size([(200, 500)], spec_with("model.width=128"), fixed={"width"})
    assert (by_width.width, by_width.height, by_width.source) == (128, 320, "width set")
    by_height = choose_input_size([(200, 500)], spec_with("model.height=640"), fixed={"height"})
    assert (by_height.width, by_height.height, by_height.source) == (256, 640, "height set")


def test_both_sides_set_win_and_a_stretch_is_warned():
    spec = spec_with("model.width=256", "model.height=256")
    choice = choose_input_size([(200, 500)] * 4, spec, fixed={"width", "height"})
    assert (choice.width, choice.height, choice.source) == (256, 256, "config")
    assert any("stretches the median image" in w and "2.50x" in w for w in choice.warnings)
    square = choose_input_size([(300, 300)] * 4, spec, fixed={"width", "height"})
    assert square.warnings == ()
    letterboxed = choose_input_size([(200, 500)] * 4, spec_with("model.resize=letterbox"), fixed={"width", "height"})
    assert letterboxed.warnings == ()  # letterbox pads instead of stretching


def test_mixed_orientations_and_spread_sizes_warn_and_suggest_letterbox():
    sizes = [(200, 500)] * 6 + [(500, 200)] * 3 + [(100, 250), (400, 1000)]
    choice = choose_input_size(sizes, LITE)
    text = "\n".join(choice.warnings)
    assert "mixed orientations" in text and "aspect ratios vary" in text
    assert all("model.resize=letterbox" in w for w in choice.warnings)
    assert (choice.width, choice.height) == (192, 448)  # the median part still decides
    varied = choose_input_size([(100, 100)] * 5 + [(400, 400)] * 5, LITE)
    assert len(varied.warnings) == 1 and "image sizes vary (4.0x" in varied.warnings[0]
    letterboxed = choose_input_size(sizes, spec_with("model.resize=letterbox"))
    assert [w.split(" (")[0] for w in letterboxed.warnings] == ["mixed orientations"]
    assert "letterbox" not in letterboxed.warnings[0]


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="no images"):
        choose_input_size([], LITE)
    with pytest.raises(ConfigError, match="positive"):
        choose_input_size([(100, 0)], LITE)
    with pytest.raises(ConfigError, match="'width' or 'height'"):
        choose_input_size([(100, 100)], LITE, fixed={"depth"})


def test_statistics_and_record():
    stats = SizeStatistics.of([(100, 200), (100, 300), (300, 100)])
    assert stats.median_aspect == 2.0 and stats.width_range == (100, 300) and stats.height_range == (100, 300)
    assert math.isclose(stats.portrait_share, 2 / 3) and math.isclose(stats.landscape_share, 1 / 3)
    record = choose_input_size([(200, 500)] * 3, LITE).record()
    assert json.loads(json.dumps(record)) == record
    assert record["image_sizes"]["count"] == 3 and record["source"] == "auto" and record["pixel_budget"] == 65536
    summary = choose_input_size([(200, 500)] * 3, LITE).summary()
    assert "192x448 (auto)" in summary and "1.31x the pixels of 256x256" in summary


# ------------------------------------------------------------------------------------------ header sizes


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_header_sizes_match_what_loading_gives(tmp_path, suffix):
    path = tmp_path / f"part{suffix}"
    assert cv2.imwrite(str(path), np.full((70, 30, 3), 128, np.uint8))
    assert read_image_size(path) == (30, 70) == (read_image(path).shape[1], read_image(path).shape[0])


def test_header_size_needs_no_pixels(tmp_path):
    """A JPEG cut short after its header still gives its size: nothing past the header was decoded."""
    path = tmp_path / "cut.jpg"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (300, 120, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:1000])
    assert read_image_size(path) == (120, 300)


def test_exif_quarter_turn_swaps_the_sides_as_loading_does(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(np.zeros((40, 100, 3), np.uint8)).save(path, exif=exif)
    decoded = read_image(path)
    assert read_image_size(path) == (decoded.shape[1], decoded.shape[0]) == (40, 100)


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="broken.png"):
        read_image_size(path)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((5, 9), np.uint8))
    assert read_image_sizes([good, good]) == [(9, 5), (9, 5)]


def test_builtin_presets_leave_the_size_to_the_data_and_user_sides_are_kept():
    from edge_inspector.model.input_size import sides_set, with_input_size

    assert sides_set(LITE) == set() and sides_set(PAPER) == set()
    assert sides_set(spec_with("model.width=128")) == {"width"}
    assert sides_set(spec_with("model.width=128", "model.height=64")) == {"width", "height"}
    preset = load_preset("haloae-lite")
    sized = with_input_size(preset, choose_input_size([(200, 500)], preset.model))
    assert (sized.model.width, sized.model.height) == (192, 448) and sides_set(sized.model) == {"width", "height"}
    assert sized.model_dump(exclude={"model"}) == preset.model_dump(exclude={"model"})


def test_a_config_file_that_sets_the_size_wins(tmp_path):
    from edge_inspector.model.input_size import sides_set

    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  width: 128\n  height: 128\n")
    spec = load_preset(str(path)).model
    assert sides_set(spec) == {"width", "height"}
    choice = choose_input_size([(200, 500)], spec, sides_set(spec))
    assert (choice.width, choice.height, choice.source) == (128, 128, "config")
