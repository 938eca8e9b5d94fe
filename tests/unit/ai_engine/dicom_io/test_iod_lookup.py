"""The cached IOD lookup answers as highdicom's own scan does, and highdicom's writers use it."""

from __future__ import annotations

import itertools

import highdicom._standard_utils as standard
import highdicom.base
import highdicom.sr.content
import pytest

from ai_engine.dicom_io import _iod_lookup, seg_writer  # noqa: F401 - importing installs it

KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "ContentDate", "Laterality")
SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
)


def _scan(attribute: str, sop_class_uid: str, exclude: list[str] | None) -> bool:
    """highdicom's uncached function (the wrapper keeps it as ``__wrapped__``)."""
    original = standard.is_attribute_in_iod.__wrapped__  # type: ignore[attr-defined]
    return bool(original(attribute, sop_class_uid, exclude_path_elements=exclude))


def test_highdicom_modules_look_up_through_the_cache() -> None:
    cached = standard.is_attribute_in_iod
    assert hasattr(cached, "cache_info")
    assert highdicom.base.is_attribute_in_iod is cached
    assert highdicom.sr.content.is_attribute_in_iod is cached
    _iod_lookup.install()  # a second install changes nothing
    assert standard.is_attribute_in_iod is cached


@pytest.mark.parametrize("exclude", [None, ["IconImageSequence"]])
def test_cached_answers_equal_the_scan(exclude: list[str] | None) -> None:
    answers = {}
    for keyword, sop in itertools.product(KEYWORDS, SOP_CLASSES):
        expected = _scan(keyword, sop, exclude)
        assert standard.is_attribute_in_iod(keyword, sop, exclude) is expected
        assert standard.is_attribute_in_iod(keyword, sop, exclude) is expected  # from the cache
        answers[keyword, sop] = expected
    # the cases the writers ask about: a DX has pixel data, not float pixel data
    dx = SOP_CLASSES[0]
    assert answers["PixelData", dx] is True
    assert answers["FloatPixelData", dx] is False
    assert answers["FloatPixelData", SOP_CLASSES[4]] is True
    assert standard.does_iod_have_pixel_data(dx) is True
    assert standard.does_iod_have_pixel_data(SOP_CLASSES[3]) is False


def test_an_unknown_sop_class_still_raises() -> None:
    with pytest.raises(KeyError, match="No IOD found"):
        standard.is_attribute_in_iod("PixelData", "1.2.3.4")
