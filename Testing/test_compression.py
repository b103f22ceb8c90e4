"""The parallel gzip writer produces ordinary gzip files that every reader accepts."""

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from voxelopt import compression, io
from voxelopt.io import write_image


def _backends():
    """The deflate implementations to test: zlib always, ISA-L where it is installed."""
    yield pytest.param(zlib, id="zlib")
    try:
        from isal import isal_zlib
    except ImportError:
        yield pytest.param(None, id="isal", marks=pytest.mark.skip(reason="isal (voxelopt[fast]) is not installed"))
    else:
        yield pytest.param(isal_zlib, id="isal")


@pytest.mark.parametrize("backend", list(_backends()))
@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 4096 + 17])
@pytest.mark.parametrize("level", [1, 6])
def test_gzip_file_round_trips_through_the_standard_gzip_reader(tmp_path, monkeypatch, size, backend, level):
    monkeypatch.setattr(compression, "BLOCK_BYTES", 4096)  # several blocks on small data
    monkeypatch.setattr(compression, "DEFLATE", backend)
    data = np.random.default_rng(size).integers(0, 8, size, dtype=np.uint8).tobytes()
    (tmp_path / "raw").write_bytes(data)
    compression.gzip_file(tmp_path / "raw", tmp_path / "raw.gz", level=level, threads=3)
    assert gzip.decompress((tmp_path / "raw.gz").read_bytes()) == data  # also checks the CRC and length
    if size > 1000:  # compressed: 3 bits of entropy per byte
        assert (tmp_path / "raw.gz").stat().st_size < 0.5 * size


def test_the_backend_is_isal_when_installed_else_zlib():
    try:
        import isal  # noqa: F401
    except ImportError:
        assert compression.backend_name() == "zlib"
    else:
        assert compression.backend_name() == "isal"


def test_write_image_nii_gz_is_read_back_by_simpleitk_and_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "BLOCK_BYTES", 64 * 1024)
    array = np.random.default_rng(0).integers(-1024, 2000, (20, 30, 40), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 1.5))
    image.SetOrigin((10.0, -5.0, 3.0))
    write_image(image, tmp_path / "ct.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


@pytest.mark.parametrize("pixel", [np.int16, np.uint8, np.uint16, np.float32, np.float64, "vector"])
def test_write_image_nii_gz_holds_the_bytes_of_simpleitks_nii(tmp_path, monkeypatch, pixel):
    """Scalar images are compressed straight from their voxels behind the header SimpleITK writes
    for a 1x1x1 image of the same geometry: the bytes are those of SimpleITK's own .nii (oblique,
    anisotropic, with metadata); vector images go through SimpleITK's .nii."""
    monkeypatch.setattr(compression, "BLOCK_BYTES", 4096)
    rng = np.random.default_rng(1)
    if pixel == "vector":
        image = sitk.GetImageFromArray(rng.normal(size=(6, 7, 9, 3)), isVector=True)
    else:
        image = sitk.GetImageFromArray((rng.random((6, 7, 9)) * 200).astype(pixel))
    image.SetSpacing((0.8, 0.7, 1.3))
    image.SetOrigin((10.0, -20.0, 30.5))
    image.SetDirection((0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, 1.0))
    image.SetMetaData("descrip", "voxelopt test")
    assert (io.nifti_header(image, tmp_path) is None) == (pixel == "vector")
    write_image(image, tmp_path / "out.nii.gz")
    sitk.WriteImage(image, str(tmp_path / "reference.nii"), False)
    assert gzip.decompress((tmp_path / "out.nii.gz").read_bytes()) == (tmp_path / "reference.nii").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "reference.nii"]


def test_a_failed_compression_leaves_no_output(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        (tmp_path / "ct.nii.gz").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(compression, "gzip_buffers", failing)
    with pytest.raises(OSError, match="disk full"):
        write_image(sitk.Image(4, 4, 4, sitk.sitkInt16), tmp_path / "ct.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_compressing_a_mapped_file_is_raised_as_it_is(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) while the blocks of a memory-mapped file are compressed reaches
    the caller as a KeyboardInterrupt (the CLI's "error: interrupted"), not as a BufferError from
    closing a map whose blocks are still referenced."""
    monkeypatch.setattr(compression, "BLOCK_BYTES", 4096)
    (tmp_path / "raw").write_bytes(bytes(10 * 4096))
    calls = []

    def interrupted_crc(block, crc):
        calls.append(block)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return zlib.crc32(block, crc)

    monkeypatch.setattr(compression, "DEFLATE", type("Deflate", (), {
        "crc32": staticmethod(interrupted_crc), "compressobj": staticmethod(zlib.compressobj),
        "DEFLATED": zlib.DEFLATED, "Z_FINISH": zlib.Z_FINISH, "Z_SYNC_FLUSH": zlib.Z_SYNC_FLUSH}))
    with pytest.raises(KeyboardInterrupt):
        compression.gzip_file(tmp_path / "raw", tmp_path / "raw.gz", threads=2)
