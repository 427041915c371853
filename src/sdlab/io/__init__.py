"""Files in and out: atomic writes, PNG metadata (A1111 infotext), image loading and grids."""

from sdlab.io.atomic import atomic_dir, atomic_save, atomic_write_bytes, atomic_write_text
from sdlab.io.images import load_image, make_grid, to_rgb
from sdlab.io.metadata import format_infotext, parse_infotext, read_png_metadata, save_png

__all__ = ["atomic_dir", "atomic_save", "atomic_write_bytes", "atomic_write_text", "load_image",
           "make_grid", "to_rgb", "format_infotext", "parse_infotext", "read_png_metadata",
           "save_png"]
