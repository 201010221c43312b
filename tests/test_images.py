"""One RGB conversion for every data source: each PIL mode converts as it should, broken input is one clear error."""

import io

import numpy as np
import pytest
from PIL import Image

from aimv2_eval.data.images import open_image, to_rgb
from aimv2_eval.errors import UserError


def test_transparency_is_composited_on_white():
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    half = to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 128))).getpixel((0, 0))
    assert all(120 <= c <= 135 for c in half)  # half-transparent black on white: mid grey
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1  # the palette's transparent colour
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)
    del pal.info["transparency"]
    assert to_rgb(pal).getpixel((0, 0)) == (10, 20, 30)


def test_grey_and_wide_grey_modes():
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    i16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert i16.mode.startswith("I;16")
    assert [to_rgb(i16).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]  # rescaled, not clipped at 255
    f = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))
    assert [to_rgb(f).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert to_rgb(Image.new("F", (3, 3), 7.0)).getpixel((0, 0)) == (0, 0, 0)  # flat image: no division by zero
    assert to_rgb(Image.fromarray(np.full((2, 2), 70000, dtype=np.int32))).mode == "RGB"  # mode I


def test_colour_modes_and_arrays():
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("YCbCr", (2, 2), (255, 128, 128))).getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(rgb) is rgb
    assert to_rgb(np.zeros((3, 4), np.uint8)).size == (4, 3)
    assert to_rgb(np.zeros((3, 4, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)  # RGBA array, transparent


def test_wrong_mode_or_array_is_one_line_user_error():
    with pytest.raises(UserError, match=r"cannot convert image x\.png from mode La to RGB") as err:
        to_rgb(Image.new("La", (2, 2)), "x.png")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"image row 3: an array of shape \(2, 2, 2\)") as err:
        to_rgb(np.zeros((2, 2, 2), np.float64), "row 3")
    assert "\n" not in str(err.value)


def test_open_image_decodes_files_and_bytes(tmp_path):
    buf = io.BytesIO()
    Image.new("P", (3, 2)).save(buf, "PNG")
    img = open_image(buf.getvalue(), "sample")
    assert img.mode == "RGB" and img.size == (3, 2)
    Image.new("L", (5, 4), 9).save(tmp_path / "g.png")
    assert open_image(tmp_path / "g.png").getpixel((0, 0)) == (9, 9, 9)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.jpg .*remove or replace") as err:
        open_image(tmp_path / "broken.jpg")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot read image .*missing.png"):
        open_image(tmp_path / "missing.png")


def test_eval_transform_reads_16_bit_grey_like_the_data_sources():
    """A 16-bit PNG through the backbone's eval transform is the image rescaled to 8 bits, not clipped to white."""
    import numpy as np
    import torch
    from PIL import Image

    from aimv2_eval.backbones import EvalTransform, create_backbone

    tf = EvalTransform(create_backbone("aimv2-tiny", pretrained=False).preprocess)
    ramp = (np.arange(112 * 112, dtype=np.uint16).reshape(112, 112) * 5).astype(np.uint16)  # 0 .. 62,715
    wide = Image.fromarray(ramp)  # uint16 -> mode I;16
    assert wide.mode.startswith("I;16")
    eight = Image.fromarray(np.round(ramp / ramp.max() * 255).astype(np.uint8), "L").convert("RGB")
    torch.testing.assert_close(tf(wide), tf(eight), atol=0.02, rtol=0)
    assert tf(wide).std() > 0.5  # not one flat colour
