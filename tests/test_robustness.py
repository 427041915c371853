"""Hostile or broken input gives one clear line, never a hang, a traceback or a silent black image."""

import os
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image, ImageFile

from sdlab.cli.main import main
from sdlab.errors import ImageReadError
from sdlab.io.images import MAX_PIXELS, load_image


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlab: error: "), err
    return lines[0]


def png_header(path, width: int, height: int):
    """A PNG that declares width x height 1-bit pixels but holds almost no data: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --- one safe image loader -------------------------------------------------------------------

def test_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("P", (9000, 9000)).save(bomb)            # 81 MP in about 10 KB
    assert bomb.stat().st_size < 100_000 and 9000 * 9000 > MAX_PIXELS

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError, match=r"9000x9000 is 81000000 pixels, over the limit of 67108864"):
        load_image(bomb)


def test_special_files_are_refused(tmp_path):
    with pytest.raises(ImageReadError, match=r"cannot read image '/dev/null': it is a device, not a regular file"):
        load_image("/dev/null")
    with pytest.raises(ImageReadError, match="it is a folder"):
        load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_img2img_on_a_fifo_fails_at_once(tmp_path):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    code = "import sys; from sdlab.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "img2img", str(fifo), "a red circle", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert one_line_error(proc.stderr) == f"sdlab: error: cannot read init image '{fifo}': it is a FIFO, not a regular file"
    assert not (tmp_path / "o").exists()


def test_img2img_refuses_a_bomb_before_loading_the_model(capsys, tmp_path):
    bomb = png_header(tmp_path / "big.png", 9000, 9000)
    code, out, err = run(capsys, "img2img", bomb, "a red circle", "--model", tmp_path / "no-model", "--out",
                         tmp_path / "o")
    assert code == 2 and out == ""
    assert "over the limit of 67108864 (decompression bomb guard)" in one_line_error(err)


@pytest.mark.parametrize("side", [9000, 20000])      # under and over PIL's own DecompressionBombError
def test_world_read_refuses_a_bomb(capsys, tmp_path, side):
    code, out, err = run(capsys, "world", "read", png_header(tmp_path / "bomb.png", side, side))
    assert code == 2 and out == ""
    assert f"{side * side} pixels, over the limit of 67108864 (decompression bomb guard)" in one_line_error(err)
