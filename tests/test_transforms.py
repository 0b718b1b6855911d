"""Transform records: validation and ``decode`` / ``decode_arrays``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from ncbench.data.transforms import KEYS, check_transform, decode, decode_arrays, make_transform, plain_transform


# ---- the record ------------------------------------------------------------------------------------

def test_check_transform_completes_defaults_in_key_order():
    t = check_transform({"resize": (4, 5), "mode": "RGB"})
    assert t == {"mode": "RGB", "invert": False, "transpose": False, "resize": [4, 5], "resample": "bilinear"}
    assert list(t) == list(KEYS)
    assert plain_transform(1, (3, 3)) == make_transform("L", [3, 3])


@pytest.mark.parametrize("record, message", [
    ("L", r"transform: expected a dict with keys \['mode', 'invert', 'transpose', 'resize', 'resample'\], got str"),
    ({"mode": "L", "resize": [2, 2], "crop": [0, 0]}, r"transform: unknown key\(s\) \['crop'\]; accepted keys"),
    ({"mode": "L"}, r"transform: missing key\(s\) \['resize'\]"),
    ({"mode": "P", "resize": [2, 2]}, r"transform.mode: expected one of \['L', 'RGB'\], got 'P'"),
    ({"mode": "L", "resize": [2, 2], "invert": "yes"}, r"transform.invert: expected true or false, got 'yes'"),
    ({"mode": "L", "resize": [2, 2], "transpose": 1}, r"transform.transpose: expected true or false, got 1"),
    ({"mode": "L", "resize": [0, 2]}, r"transform.resize: expected \[H, W\], two positive integers, got \[0, 2\]"),
    ({"mode": "L", "resize": 28}, r"transform.resize: expected \[H, W\]"),
    ({"mode": "L", "resize": [2, 2], "resample": "cubic"}, r"transform.resample: expected one of \['nearest', 'bilinear'"),
])
def test_bad_records_name_the_field_and_what_was_expected(record, message):
    with pytest.raises(ValueError, match=message):
        check_transform(record)


def test_decode_steps_in_documented_order_match_pil():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (30, 17, 3), dtype=np.uint8), mode="RGB")
    t = make_transform("L", (9, 11), invert=True, transpose=True, resample="bilinear")
    by_pil = ImageOps.invert(im.convert("L")).transpose(Image.Transpose.TRANSPOSE).resize((11, 9), Image.Resampling.BILINEAR)
    out = decode(im, t)
    assert out.shape == (9, 11, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.asarray(by_pil))
    # the batched form used by array-backed loaders is the same function
    gray = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(decode_arrays(gray[None], t)[0], out)
    rgb = make_transform("RGB", (30, 17))
    np.testing.assert_array_equal(decode(im, rgb), np.asarray(im))
    with pytest.raises(ValueError, match=r"images for transform mode 'RGB' must be uint8 \[N, h, w, 3\], got uint8 \[1, 30, 17\]"):
        decode_arrays(gray[None], rgb)
