"""Signals in and answers out, as a bundle declares them: image decode and preprocessing (`image`), and
class names / boxes from raw outputs (`answer`). NumPy and Pillow only, so devices run the same code."""

from edgewise.media.answer import classify, detect, postprocessing_for, read_text
from edgewise.media.image import ImageSpec, Prepared, decode, prepare, spec_from_data

__all__ = ["ImageSpec", "Prepared", "classify", "decode", "detect", "postprocessing_for", "prepare", "read_text",
           "spec_from_data"]
