"""Every reader refuses, from the header and before decoding, a file that declares more pixels
(voxels, frames × pixels, bands × pixels) than the limit, with one line naming the file, what
it declares, the limit and how to raise it; ``CNNSUITE_MAX_PIXELS`` moves the limit for all."""

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
from cnnsuite.tasks.multispectral3d.readers import GeoTiffReader
from cnnsuite.tasks.video3d import readers as video_readers
from PIL import Image, ImageFile
from test_multispectral3d import band_cube, write_tif
from test_video3d import write_bar_video

from cnnsuite.data import BadFileError, find_bad_images, image_size, read_image
from cnnsuite.data import images as image_module
from cnnsuite.data.limits import ENV


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit black PNG of ``width`` × ``height``: 30,000² pixels fit in 110 KB and
    decode to 0.9 G pixels (2.7 GB as RGB)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def refuses_nothing_decoded(*args, **kwargs):
    raise AssertionError("the file was decoded")


def test_a_png_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    monkeypatch.setattr(image_module, "decode_image", refuses_nothing_decoded)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuses_nothing_decoded)
    with pytest.raises(BadFileError) as raised:
        read_image(bomb, 3)
    message = str(raised.value)
    assert message.startswith(f"{bomb}: declares 30000x30000 = 900,000,000 pixels, over the limit of 178,956,970")
    assert f"{ENV}=900000000" in message and "--max_pixels" in message and "\n" not in message
    with pytest.raises(BadFileError, match="declares 30000x30000"):
        image_size(bomb)  # what a folder's setup check reads
    assert "declares 30000x30000" in str(find_bad_images(tmp_path, ["bomb.png"])["bomb.png"])


def test_the_pixel_limit_is_one_setting(tmp_path, monkeypatch):
    """``CNNSUITE_MAX_PIXELS`` lowers and raises the limit (past Pillow's own, too); a value
    that is not a number of pixels is named."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after: a raised limit raises it
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(small)
    frames = [Image.fromarray(np.full((20, 30), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    assert read_image(small, 1).shape == (1, 20, 30)
    monkeypatch.setenv(ENV, "599")
    with pytest.raises(BadFileError, match=r"small.png: declares 30x20 = 600 pixels, over the limit of 599;"):
        read_image(small, 1)
    monkeypatch.setenv(ENV, "1000")  # torchvision decodes every frame of a GIF: they count
    with pytest.raises(BadFileError, match=r"declares 30x20 x 3 frames = 1,800 pixels, over the limit of 1,000"):
        read_image(tmp_path / "animated.gif", 1)
    for bad in ("lots", "0", "2.5"):  # no pixel at all, or a part of one, is no limit
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=f"{ENV}='{bad}': expected a whole number of pixels"):
            read_image(small, 1)
    wide = tmp_path / "wide.png"  # over Pillow's own refusal (2 x 89,478,485 pixels): allowed when raised
    wide.write_bytes(bomb_png(200_000, 1_000))
    monkeypatch.setenv(ENV, "2e8")
    assert image_size(wide) == (200_000, 1_000)


def test_a_volume_is_refused_from_its_header(tmp_path, monkeypatch):
    """A ``.nii.gz`` whose header declares 2048³ voxels (its data a few zeros) is refused
    before any voxel is read; a normal volume is read, and refused when the limit is lower."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.uint8)
    with gzip.open(tmp_path / "bomb.nii.gz", "wb") as file:
        file.write(header.binaryblock + b"\0" * 4 + b"\0" * 2**16)
    load = LoadVolumed("image")
    with pytest.raises(BadFileError) as raised:
        load({"image": str(tmp_path / "bomb.nii.gz")})
    assert str(raised.value).startswith(
        f"{tmp_path / 'bomb.nii.gz'}: declares 2048x2048x2048 = 8,589,934,592 voxels, over the limit of 1,073,741,824"
    )
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 14), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    assert load({"image": str(tmp_path / "scan.nii.gz")})["image"].shape == (1, 10, 12, 14)
    monkeypatch.setenv(ENV, "1000")
    with pytest.raises(BadFileError, match=r"scan.nii.gz: declares 10x12x14 = 1,680 voxels, over the limit of 1,000"):
        load({"image": str(tmp_path / "scan.nii.gz")})


def write_extended_nifti(path, offset: int, extensions: list[tuple[int, int]]) -> None:
    """A 4x4x4 NIfTI whose voxels start at ``offset`` after header extensions of ``(size
    field, bytes written)`` each (the 8 bytes of its head included), written in 1 MiB pieces."""
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = offset
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wb") as file:
        file.write(header.binaryblock + bytes([1, 0, 0, 0]))
        for says, takes in extensions:
            file.write(struct.pack("<2i", says, 0))
            for start in range(8, takes, 1 << 20):
                file.write(b"A" * min(1 << 20, takes - start))
        file.write(bytes(64))


MIB = 1 << 20


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    ("offset", "extensions", "message"),
    [
        (352 + 64 * MIB, [(64 * MIB, 64 * MIB)], "take at least 67,108,864 bytes in 1 of them"),
        (352 + 16, [(64 * MIB, 64 * MIB)], "take at least 67,108,864 bytes in 1 of them"),  # the offset says 16
        (0, [(4 * MIB, 4 * MIB)] * 3, "take at least 12,582,912 bytes in 3 of them"),  # no offset: to the end
        (0, [(16, 16)] * 1100, "take at least 16,400 bytes in 1,025 of them"),
        (0, [(-1, 8)], "header extension 1 says it takes -1 bytes; expected 16 or more"),
        (352 + 16, [(0, 8)], "header extension 1 says it takes 0 bytes; expected 16 or more"),  # read(-8): to the end
    ],
)
def test_a_nifti_whose_header_extensions_are_huge_is_refused_before_nibabel_reads_them(
    tmp_path, monkeypatch, suffix, offset, extensions, message
):
    """nibabel reads a NIfTI's header extensions whole with its header: as many bytes as each
    says it takes while the voxel offset leaves room, to the end of the file where the offset
    is 0, and a negative one to the end too. Megabytes of repeated bytes gzip to kilobytes, and
    a few MB of upload to serve would cost its inference worker gigabytes. The extensions'
    sizes are walked first, and such a file refused."""
    path = tmp_path / f"extended{suffix}"
    write_extended_nifti(path, offset, extensions)

    def read(*args, **kwargs):
        raise AssertionError("nibabel read the extensions")

    monkeypatch.setattr(nib.nifti1.Nifti1Extensions, "from_fileobj", read)
    with pytest.raises(BadFileError, match=rf"extended{suffix}: (its header extensions )?{message}"):
        LoadVolumed("image")({"image": str(path)})


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_a_nifti_with_header_extensions_within_the_limits_loads(tmp_path, suffix, endianness):
    """A scan written with a comment and a JSON extension, as dcm2niix and AFNI add them, in
    either byte order (the sizes are read in the header's)."""
    header = nib.Nifti1Header(endianness=endianness)
    image = nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4), header)
    for code, text in (("comment", b"scanner notes"), ("workflow_fwds", b'{"a": 1}' * 2000)):
        image.header.extensions.append(nib.nifti1.Nifti1Extension(code, text))
    nib.save(image, tmp_path / f"scan{suffix}")
    assert nib.load(tmp_path / f"scan{suffix}").header.endianness == endianness
    loaded = LoadVolumed("image")({"image": str(tmp_path / f"scan{suffix}")})["image"]
    assert loaded.shape == (1, 4, 4, 4) and float(loaded.max()) == 63


def test_a_nifti_whose_voxels_start_after_zeros_and_no_extension_loads(tmp_path):
    """A voxel offset past the header with the extension flag 0: the bytes between are padding,
    which nibabel skips and the walk does not read as extensions."""
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 512
    (tmp_path / "padded.nii").write_bytes(header.binaryblock + bytes(512 - 348) + bytes(range(64)))
    loaded = LoadVolumed("image")({"image": str(tmp_path / "padded.nii")})["image"]
    assert float(loaded.max()) == 63


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])  # MP4 counts frames in its header; WebM gives a duration
def test_a_video_is_refused_from_its_header_before_pytorchvideo_opens_it(tmp_path, monkeypatch, suffix):
    video = tmp_path / f"clip{suffix}"
    write_bar_video(video, frames=16, step=1)  # 16 frames of 16 x 16
    assert video_readers.probe_video(video)[0] == 2
    monkeypatch.setenv(ENV, "4000")
    monkeypatch.setattr(video_readers.EncodedVideo, "from_path", refuses_nothing_decoded)
    with pytest.raises(BadFileError, match=rf"clip{suffix}: declares 16 frames of 16x16 = 4,096 pixels, over"):
        video_readers.probe_video(video)
    with pytest.raises(BadFileError, match=rf"clip{suffix}: decodes to 16 frames of 16x16 before its end"):
        video_readers.decode_video(video)  # a header that says fewer frames than the file holds stops here


def test_a_geotiff_is_refused_from_its_header(tmp_path, monkeypatch):
    path = write_tif(tmp_path / "patch.tif", band_cube(count=13, size=8))
    assert GeoTiffReader(None)(path).shape == (13, 8, 8)
    monkeypatch.setenv(ENV, "800")
    with pytest.raises(BadFileError, match=r"patch.tif: declares 13 bands of 8x8 = 832 pixels, over the limit of 800"):
        GeoTiffReader(None)(path)
