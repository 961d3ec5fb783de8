"""multispectral3d: GeoTIFF reading by band name, errors that name the file, statistics that
travel in the checkpoint, the CLI with evaluation."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from cnnsuite.tasks.multispectral3d import baselines
from cnnsuite.tasks.multispectral3d.datamodule import MultispectralDataModule, model_input
from cnnsuite.tasks.multispectral3d.default_data import BANDS, MOSAIC_CLASSES, mosaic
from cnnsuite.tasks.multispectral3d.readers import GeoTiffReader, geotiff_suffix
from conftest import fit
from rasterio.transform import Affine

from cnnsuite.cli import main
from cnnsuite.data import BadFileError
from cnnsuite.data.augment import BatchFlipsAndTurns
from cnnsuite.errors import ConfigError
from cnnsuite.trust.checkpoint import rebuild
from cnnsuite.use.predict import Predictor

SMALL_MODEL = ["--model.init_args.backbone_kwargs", "{channels: [4, 8], kernel_size: [3, 3, 3], pool_size: [1, 2, 2]}"]


UTM_10M = Affine(10, 0, 500_000, 0, -10, 5_000_000)  # a 10 m grid in a UTM zone, as Sentinel-2 tiles have


def write_tif(path, data, dtype="uint16", descriptions=None, transform=UTM_10M,
              **profile):  # fmt: skip
    """A GeoTIFF with a UTM CRS and (by default) a 10 m transform, as EuroSAT-MS's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", dtype=dtype, count=count, height=height, width=width,
                       crs="EPSG:32632", transform=transform, **profile) as dst:  # fmt: skip
        dst.write(data.astype(dtype))
        if descriptions:
            dst.descriptions = descriptions
    return path


def band_cube(count=13, size=8, offset=0):
    """Band k (file order, 0-based) holds 100 * (k + 1) + offset everywhere: its values name it."""
    return np.stack([np.full((size, size), 100 * (k + 1) + offset) for k in range(count)])


def make_folder(root, classes=("Forest", "River", "SeaLake"), per_class=6, size=16, count=13, dtype="uint16"):
    """A tiny EuroSAT-MS folder; the class is told by the red-to-NIR ratio and a bright square.
    ``float32`` files hold surface reflectance in 0..1, as Sentinel-2 L2A chains write it
    (the digital numbers divided by 10,000)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for n in range(1, per_class + 1):
            cube = rng.integers(800, 1200, size=(count, size, size))
            cube[3] += 600 * c  # B04
            cube[:, : size // 2, : size // 2] += 300 * c
            write_tif(root / name / f"{name}_{n}.tif", cube / 10_000 if dtype == "float32" else cube, dtype)
    return root


def test_reader_names_bands_in_eurosat_order_and_reads_compressed_files(tmp_path):
    plain = write_tif(tmp_path / "plain.tif", band_cube())
    values = GeoTiffReader(["B02", "B03", "B04", "B08", "B8A", "B09"])(plain)[:, 0, 0]
    # B8A is the last band of a EuroSAT-MS file, not the ninth.
    assert values.tolist() == [200, 300, 400, 800, 1300, 900]
    assert GeoTiffReader(None)(plain).shape == (13, 8, 8)
    for compress in ("deflate", "lzw", "zstd"):
        packed = write_tif(tmp_path / f"{compress}.tif", band_cube(), compress=compress, tiled=True,
                           blockxsize=16, blockysize=16)  # fmt: skip
        assert np.array_equal(GeoTiffReader(list(BANDS))(packed), GeoTiffReader(list(BANDS))(plain))
    # A file with its own band descriptions is read by them, whatever their order.
    named = write_tif(tmp_path / "named.tif", band_cube(4), descriptions=("B08", "B04", "B03", "B02"))
    assert GeoTiffReader(["B02", "B08"])(named)[:, 0, 0].tolist() == [400, 100]
    # Google Earth Engine names Sentinel-2's bands without the zero: B1 is B01, b8a B8A.
    engine = write_tif(tmp_path / "engine.tif", band_cube(4), descriptions=("B8", "B4", "b8a", "B2"))
    assert GeoTiffReader(["B02", "B08", "B8A"])(engine)[:, 0, 0].tolist() == [400, 100, 300]
    # Nodata pixels take the mean of the band's valid ones, rounded to a digital number:
    # uint16 is read as stored, floats as float32.
    cube = band_cube(offset=1)
    cube[:, 0, 0] = 0
    cube[:, 0, 1] = 145  # band B01's valid mean: (62 * 101 + 145) / 63 = 101.698, rounded (not cut) to 102
    holed = GeoTiffReader(["B01"])(write_tif(tmp_path / "holed.tif", cube, nodata=0))
    assert holed[0, 0, 0] == 102 and holed.dtype == np.uint16
    floats = GeoTiffReader(["B01"])(write_tif(tmp_path / "holed32.tif", cube, "float32", nodata=0))
    assert floats[0, 0, 0] == pytest.approx(101.698, abs=1e-3) and floats.dtype == np.float32


def test_a_file_naming_only_some_bands_is_read_by_them_or_refused(tmp_path):
    """Band descriptions left blank for some bands fall back to the order assumed for unnamed
    files only where the names given agree with it; a 13-band file in wavelength order (B8A
    ninth) with one blank description is refused, never read with B8A taken for B09."""
    wavelength = [*BANDS[:8], "B8A", *BANDS[8:12]]
    blank_last = write_tif(tmp_path / "wavelength.tif", band_cube(), descriptions=(*wavelength[:12], ""))
    with pytest.raises(BadFileError, match=r"wavelength.tif: .*band 9 is B8A.*B09"):
        GeoTiffReader(["B8A", "B09"])(blank_last)
    agreeing = write_tif(tmp_path / "eurosat.tif", band_cube(), descriptions=(*BANDS[:12], ""))
    assert GeoTiffReader(["B8A", "B09"])(agreeing)[:, 0, 0].tolist() == [1300, 900]
    # B2 is B02: a second band of that name was read as the first one
    twice = write_tif(tmp_path / "twice.tif", band_cube(4), descriptions=("B02", "B03", "B2", "B04"))
    for bands in (None, ["B02", "B04"]):
        with pytest.raises(BadFileError, match=r"twice.tif: .*name a band twice \(bands 1 and 3 are both B02\)"):
            GeoTiffReader(bands)(twice)
    four = write_tif(tmp_path / "four.tif", band_cube(4), descriptions=("B02", "", "B04", ""))
    in_order = ["B02", "B03", "B04", "B08"]  # data.bands naming the file's bands, as its own names agree
    assert GeoTiffReader(in_order)(four)[:, 0, 0].tolist() == [100, 200, 300, 400]
    with pytest.raises(BadFileError, match=r"four.tif: .*band 1 is B02.*B08"):
        GeoTiffReader(["B08", "B04", "B03", "B02"])(four)


def test_other_band_counts_are_named_by_bands(tmp_path):
    four = ["B02", "B03", "B04", "B08"]
    folder = make_folder(tmp_path / "user", count=4, per_class=2)
    dm = MultispectralDataModule(data_dir=str(folder), bands=four, layout="channels")
    assert dm.band_names == four and dm.in_channels == 4 and dm.input_shape == (4, 16, 16)
    with pytest.raises(BadFileError, match=r"Forest_1.tif: has 4 bands without names; expected 13"):
        MultispectralDataModule(data_dir=str(folder))


def test_band_names_of_other_files_do_not_name_a_file_without_them(tmp_path):
    """Where most 4-band files name their bands (B08, B04, B03, B02) and one names none, the
    one is a bad file, as the README says of unnamed files without data.bands: the others'
    order is not lent to it (its bands may be in any order); data.bands names it."""
    order = ("B08", "B04", "B03", "B02")
    for name in ("Forest", "River"):
        for n in range(3):
            write_tif(tmp_path / "user" / name / f"{name}_{n}.tif", band_cube(4), descriptions=order)
    unnamed = write_tif(tmp_path / "user" / "River" / "unnamed.tif", band_cube(4))
    dm = MultispectralDataModule(data_dir=str(tmp_path / "user"))
    assert dm.band_names == list(order)
    with pytest.raises(BadFileError, match=r"unnamed.tif: has 4 bands without names"):
        dm.reader(unnamed)
    declared = MultispectralDataModule(data_dir=str(tmp_path / "user"), bands=["B02", "B03", "B04", "B08"])
    assert declared.reader(unnamed)[:, 0, 0].tolist() == [100, 200, 300, 400]


def test_bad_files_are_named_together_and_the_folder_is_only_read(tmp_path):
    folder = make_folder(tmp_path / "user")
    write_tif(folder / "Forest" / "Forest_2.tif", band_cube(10, 16))
    write_tif(folder / "River" / "River_3.tif", band_cube(13, 16), dtype="float32")
    truncated = folder / "SeaLake" / "SeaLake_4.tif"
    truncated.write_bytes(truncated.read_bytes()[:600])
    (folder / "SeaLake" / "SeaLake_5.tif").write_text("not a tiff")
    write_tif(folder / "SeaLake" / "SeaLake_6.tif", band_cube(13, 20))
    (folder / "River" / "River_4.tif").write_bytes(b"")
    cut = folder / "River" / "River_5.tif"  # its header whole, its pixels cut
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 3 // 4])
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    dm = MultispectralDataModule(data_dir=str(folder))
    with pytest.raises(BadFileError, match="7 of 18 GeoTIFF patches cannot be used") as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert "River_4.tif: empty file (0 bytes), expected a GeoTIFF" in message
    # GDAL's words, not rasterio's pointer to them ("See previous exception for details")
    assert "River_5.tif: cannot read as a GeoTIFF (River_5.tif, band 1: IReadBlock failed" in message
    assert "previous exception" not in message
    assert "Forest_2.tif: has 10 bands without names; expected 13" in message
    assert "River_3.tif: bands are float32, expected uint16 as the run's patches are" in message
    assert "SeaLake_4.tif: cannot read as a GeoTIFF" in message
    assert "SeaLake_5.tif: cannot read as a GeoTIFF" in message
    assert "SeaLake_6.tif: is 20x20 pixels, expected 16x16" in message
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before, "the user's folder was written to"


def test_an_odd_first_patch_is_the_one_named_not_every_other(tmp_path):
    """The size, bands and data type came from the first patch alone: one odd patch sorting
    first had the 17 others named bad. The ones most patches share are the run's."""
    folder = make_folder(tmp_path / "user")
    write_tif(folder / "Forest" / "Forest_1.tif", band_cube(13, 20))
    dm = MultispectralDataModule(data_dir=str(folder))
    assert (dm.size, dm.dtype, len(dm.band_names)) == ((16, 16), "uint16", 13)
    with pytest.raises(BadFileError, match=r"1 of 18 GeoTIFF patches cannot be used:\n.*Forest_1.tif: is 20x20"):
        dm.setup("fit")


def test_float_reflectance_trains_and_predicts_and_nan_is_a_bad_file(tmp_path):
    folder = make_folder(tmp_path / "user", dtype="float32")
    nan = band_cube(13, 16).astype("float32") / 10_000
    nan[2, 3, 4] = np.nan
    write_tif(folder / "River" / "River_7.tif", nan, "float32")  # no nodata tag: NaN is damage
    with pytest.raises(BadFileError, match="1 of 19 GeoTIFF patches cannot be used") as caught:
        fit("multispectral3d", tmp_path, "--data.data_dir", str(folder), "--trainer.fast_dev_run", "true")
    assert "River_7.tif: 1 of 3328 pixels are NaN or infinite; expected finite values" in str(caught.value)

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (folder / "River" / "River_7.tif").rename(inputs / "nan.tif")
    shutil.copy(folder / "Forest" / "Forest_1.tif", inputs)
    write_tif(inputs / "uint16.tif", band_cube(13, 16))
    run = fit("multispectral3d", tmp_path, "--data.data_dir", str(folder), "--trainer.max_epochs", "1",
              "--data.batch_size", "6", "--evaluate", "false", *SMALL_MODEL)  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=True)["MultispectralDataModule"]
    assert state["dtype"] == "float32" and 0.05 < float(state["band_mean"][0]) < 0.15  # learnt from 0..1 values
    _, datamodule = rebuild(ckpt, run, {"data_dir": folder})
    one = np.full((2, 1, 1), 0.25, np.float32)
    assert datamodule.reflectance(one).tolist() == one.tolist()  # the class spectra plot is in reflectance
    assert MultispectralDataModule().reflectance(one * 10_000).tolist() == one.tolist()
    main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(tmp_path / "out")])
    lines = {Path(line["path"]).name: line for line in map(json.loads, (tmp_path / "out" / "predictions.jsonl").open())}
    assert set(lines["Forest_1.tif"]["probabilities"]) == {"Forest", "River", "SeaLake"}
    assert "nan.tif: 1 of 3328 pixels are NaN or infinite" in lines["nan.tif"]["error"]
    assert "uint16.tif: bands are uint16, expected float32 as the run's patches are" in lines["uint16.tif"]["error"]


def test_nan_nodata_pixels_are_filled(tmp_path):
    """A file whose nodata tag is NaN marks its NaN pixels as nodata: they take the band's mean."""
    cube = band_cube(13, 4).astype("float32")
    cube[0, 0, 0] = np.nan
    values = GeoTiffReader(["B01"])(write_tif(tmp_path / "holed.tif", cube, "float32", nodata=np.nan))
    assert values[0, 0, 0] == 100 and np.isfinite(values).all()
    cube[0, 1, 1] = np.inf  # not nodata: damage
    with pytest.raises(BadFileError, match="inf.tif: 1 of 16 pixels are NaN or infinite"):
        GeoTiffReader(["B01"])(write_tif(tmp_path / "inf.tif", cube, "float32", nodata=np.nan))


def test_a_band_of_nodata_alone_is_a_bad_file(tmp_path):
    """A band without one valid pixel has no mean to fill it with: the patch is named, not read
    as a band of zeros the model then classifies with confidence."""
    cube = band_cube(13, 4).astype("float32")
    cube[3] = np.nan
    with pytest.raises(BadFileError, match=r"empty.tif: band B04 has no valid pixel \(all 16 are nodata\)"):
        GeoTiffReader(["B02", "B04"])(write_tif(tmp_path / "empty.tif", cube, "float32", nodata=np.nan))
    assert GeoTiffReader(["B02", "B03"])(tmp_path / "empty.tif").shape == (2, 4, 4)  # the band not read


def test_a_tif_that_is_another_format_naming_other_files_is_not_read(tmp_path):
    """GDAL tells a format by its content: a ``.tif`` (a data file, an upload to serve) holding a
    VRT would have it read whatever files or URLs the VRT names. Only GeoTIFFs are opened."""
    secret = write_tif(tmp_path / "elsewhere" / "secret.tif", band_cube(13, 4))
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{secret}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in range(1, 14)
    )
    upload = tmp_path / "upload.tif"
    upload.write_text(f'<VRTDataset rasterXSize="4" rasterYSize="4">{bands}</VRTDataset>')
    with pytest.raises(BadFileError, match=r"upload.tif: cannot read as a GeoTIFF \(.*not recognized"):
        GeoTiffReader(None)(upload)


def test_a_geotiff_named_without_its_ending_is_told_by_its_first_bytes(tmp_path):
    """serve names an upload without an ending the task takes by its content: a TIFF by its
    magic, read as ``.tif``; an image of another format is no patch."""
    dm = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "user", per_class=2)))
    patch = write_tif(tmp_path / "blob", band_cube(13, 16))
    assert dm.content_suffix(patch.read_bytes()) == ".tif"
    assert GeoTiffReader(None)(patch.rename(tmp_path / "blob.tif")).shape == (13, 16, 16)
    assert dm.content_suffix(b"\x89PNG\r\n\x1a\n" + bytes(32)) is None


def test_unknown_band_names_are_refused(tmp_path):
    folder = make_folder(tmp_path / "user", per_class=1)
    with pytest.raises(BadFileError, match=r"Forest_1.tif: has no band B13, B8B; its bands are B01, .*, B8A"):
        MultispectralDataModule(data_dir=str(folder), bands=["B02", "B13", "B8B"])
    # The embedded default has no B13; checked when it is prepared, not when the datamodule is
    # made, which a checkpoint of a run on the user's own bands does to predict.
    with pytest.raises(ValueError, match="data.bands: no band B13"):
        MultispectralDataModule(bands=["B13"], data_root=str(tmp_path / "data")).prepare_data()
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="data.layout='rgb'"):
        MultispectralDataModule(layout="rgb")


def test_fit_evaluate_with_statistics_from_the_checkpoint(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "user")
    bands = ["B04", "B03", "B02", "B08"]
    # The task's own model: its layout must take a 4-band subset.
    run = fit("multispectral3d", tmp_path, "--data.data_dir", str(folder), "--data.bands", json.dumps(bands),
              "--trainer.max_epochs", "1", "--data.batch_size", "6")  # fmt: skip
    # kappa is scored in validation too, where checkpoint.monitor=val/kappa can pick the best epoch
    assert "val/kappa" in (run / "metrics.csv").read_text().splitlines()[0]
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    state = torch.load(ckpt, weights_only=True)["MultispectralDataModule"]
    assert state["bands"] == bands and state["band_mean"].shape == (4,)
    train = [folder / i for i in state["splits"]["train"]]
    expected = np.mean([GeoTiffReader(bands)(p).mean(axis=(1, 2)) for p in train], axis=0)
    assert np.allclose(state["band_mean"].numpy(), expected, rtol=1e-5)

    # Later files change; evaluation still normalises with the run's own statistics.
    for path in train:
        with rasterio.open(path) as src:
            data = src.read()
        write_tif(path, data * 2)
    model, datamodule = rebuild(ckpt, run, {"data_dir": folder})
    datamodule.setup("test")
    assert torch.equal(datamodule.band_stats[0], state["band_mean"])
    assert model.hparams.in_channels == 1 and datamodule.input_shape == (1, 4, 16, 16)

    # The evaluation and its plots read the test split's patches only, each once.
    read, opened = GeoTiffReader.__call__, []
    monkeypatch.setattr(GeoTiffReader, "__call__", lambda self, path: opened.append(path.name) or read(self, path))
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    assert sorted(opened) == sorted(Path(i).name for i in state["splits"]["test"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test/acc", "test/acc_macro", "test/kappa", "test/f1_macro", "test/acc/River"} <= set(metrics)
    for plot in ("confusion_matrix.png", "predictions.png", "class_spectra.png"):
        assert (tmp_path / "eval" / plot).stat().st_size > 0


@pytest.mark.parametrize("cache_limit_mb", [1024, 0])
def test_a_patch_is_read_once_when_its_split_fits_the_cache(tmp_path, monkeypatch, cache_limit_mb):
    """The check of every file, the band statistics and the cached datasets share one read of
    each patch; without a cache nothing read by the check is held but what the statistics take
    of each training patch, and the datasets read the files on every access."""
    folder = make_folder(tmp_path / "user")
    counts: dict[str, int] = {}
    read = GeoTiffReader.__call__

    def counted(self, path):
        counts[path.name] = counts.get(path.name, 0) + 1
        return read(self, path)

    monkeypatch.setattr(GeoTiffReader, "__call__", counted)
    dm = MultispectralDataModule(data_dir=str(folder), cache_limit_mb=cache_limit_mb)
    dm.setup("fit")
    assert len(counts) == 18 and set(counts.values()) == {1}, "the check and the statistics read each patch once"
    assert dm.checked_moments == {}  # taken by the statistics, or never kept
    train = [read(dm.reader, folder / i).astype(np.float64) for i in dm.splits["train"]]
    np.testing.assert_allclose(dm.band_stats[0], np.mean([c.mean(axis=(1, 2)) for c in train], axis=0), rtol=1e-6)
    np.testing.assert_allclose(dm.band_stats[1], np.stack(train).std(axis=(0, 2, 3)), rtol=1e-4)
    datasets = [dm.datasets[stage] for stage in ("train", "val", "test")]
    assert dm.checked_values == {}  # handed over to the datasets, or never kept
    if cache_limit_mb:
        assert set(counts.values()) == {1}
    else:
        before = dict(counts)
        datasets[1][0]
        assert counts[Path(datasets[1].ids[0]).name] == before[Path(datasets[1].ids[0]).name] + 1
    for dataset in datasets:  # the values the check read are the file's
        np.testing.assert_array_equal(dataset.raw[0], read(dm.reader, folder / dataset.ids[0]))


def test_testing_without_training_holds_no_reflectances_of_the_training_split(tmp_path):
    """Lightning sets a test run up before it loads the checkpoint: the band statistics are
    computed from the training split, whose reflectances no dataset of the run will take."""
    dm = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "user")))
    dm.setup("test")
    dm.datasets["test"]
    assert dm.checked_values == {}


@pytest.mark.parametrize(("dtype", "cached"), [("uint16", True), ("float32", False)])
def test_the_cache_holds_digital_numbers_as_stored(tmp_path, dtype, cached):
    """uint16 patches are kept as uint16, half the memory of float32: a training split that
    fits the limit only so (12 patches of 13 x 16 x 16, 79,872 bytes against 159,744) is
    cached, and its batches are the float32 ones normalised."""
    limit_mb = 0.1  # 104,858 bytes
    floats = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "f")), cache_limit_mb=0)
    floats.setup("fit")
    dm = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "d", dtype=dtype)), cache_limit_mb=limit_mb)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == 12 and train.raw.cached is cached
    assert train.raw[0].dtype == (np.uint16 if dtype == "uint16" else np.float32)
    if dtype == "uint16":
        expected = [x for x, _ in floats.datasets["train"].__getitems__(list(range(12)))]
        torch.testing.assert_close([x for x, _ in train.__getitems__(list(range(12)))], expected)


@pytest.mark.parametrize("layout", ["cube", "channels", "mean"])
def test_training_patches_are_flipped_and_turned_on_the_batch_in_every_layout(tmp_path, layout):
    """The loader gives training patches as it gives the test split's (normalised, shaped by
    the layout, fetched a batch at once); the flips and quarter turns are drawn per patch and
    made on the batch over height and width only, never along the bands; a patch that is not
    square is only flipped."""
    dm = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "d")), layout=layout)
    dm.setup("fit")
    train = dm.datasets["train"]
    raw = np.stack([train.raw[i] for i in range(len(train))])
    patches = torch.stack([patch for patch, _ in train.__getitems__(list(range(len(train))))])
    expected = model_input(raw, dm.band_stats, layout)
    torch.testing.assert_close(patches, expected, rtol=0, atol=0)  # the loader's: not moved
    torch.testing.assert_close(train[3][0], expected[3], rtol=0, atol=0)
    batch = [patches.repeat(8, *[1] * (patches.dim() - 1)), torch.zeros(8 * len(patches))]
    torch.manual_seed(0)
    moved = dm.augment_batch(batch)[0]
    torch.manual_seed(0)
    torch.testing.assert_close(moved, BatchFlipsAndTurns(2, [(0, 1)], prob=0.5)(batch[0]), rtol=0, atol=0)
    seen = set()
    for before, after in zip(batch[0], moved, strict=True):
        found = [(k, f) for k in range(4) for f in (False, True)
                 if torch.equal(torch.rot90(before.flip(-1) if f else before, k, dims=(-2, -1)), after)]  # fmt: skip
        assert found
        seen.add(found[0])
    assert len(seen) == 8  # every flip and turn of the square, over height and width
    wide = [patches[..., :12], batch[1][: len(patches)]]
    assert dm.augment_batch(wide)[0].shape == wide[0].shape
    assert MultispectralDataModule(data_dir=str(tmp_path / "d"), augment=False).augment_batch(batch) is batch


def test_channels_layout_trains_from_a_13_band_torchgeo_file_on_a_band_subset(tmp_path, caplog):
    """The 2D channels layout names its bands (the cube layout has one unnamed channel); the CLI
    links them into the model, whose first layer takes each band's kernel from TorchGeo's file."""
    timm = pytest.importorskip("timm")
    caplog.set_level("INFO")
    folder = make_folder(tmp_path / "user", per_class=4, size=32)  # a ResNet's total stride
    bands = ["B02", "B03", "B04", "B08"]
    assert MultispectralDataModule(data_dir=str(folder), bands=bands, layout="channels").channel_names == bands
    assert MultispectralDataModule(data_dir=str(folder), bands=bands).channel_names is None  # cube: 1 channel
    path = tmp_path / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    torch.save(timm.create_model("resnet18", in_chans=13, pretrained=False).state_dict(), path)
    run = fit("multispectral3d", tmp_path, "--data.data_dir", str(folder), "--data.bands", json.dumps(bands),
              "--data.layout", "channels", "--model.spatial_dims", "2", "--model.backbone", "torchvision_resnet18",
              "--model.backbone_kwargs", "{}", "--model.backbone_weights", f"torchgeo:{path}",
              "--trainer.max_epochs", "1", "--data.batch_size", "64", "--evaluate", "false")  # fmt: skip
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["channel_names"] == bands and saved["in_channels"] == 4
    assert "input channels by name: B02 <- B02, B03 <- B03, B04 <- B04, B08 <- B08\n" in caplog.text


def test_default_fast_dev_run_writes_geotiffs(tmp_path):
    fit("multispectral3d", tmp_path, "--trainer.fast_dev_run", "true", "--data.default_size", "2",
        "--data.default_patch", "16", *SMALL_MODEL)  # fmt: skip
    default = tmp_path / "data" / "multispectral3d-default_patch=16-default_size=2"
    files = sorted(default.glob("*/*.tif"))
    assert len(files) == 2 * 14 and files[0].name == f"{files[0].parent.name}_1.tif"
    with rasterio.open(files[0]) as src:
        assert src.count == 13 and src.dtypes[0] == "uint16" and src.crs.to_epsg() == 32632
        assert src.descriptions == BANDS and src.res == (10.0, 10.0)


# --- prediction on raw files ----------------------------------------------------------------------

BANDS_RGBN = ["B04", "B03", "B02", "B08"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on a tiny folder of 16-pixel patches (the default's are 64), four bands:
    ``(folder, checkpoint)``, shared by the prediction tests."""
    tmp = tmp_path_factory.mktemp("multispectral")
    folder = make_folder(tmp / "user")
    run = fit("multispectral3d", tmp, "--data.data_dir", str(folder), "--data.bands", json.dumps(BANDS_RGBN),
              "--trainer.max_epochs", "1", "--data.batch_size", "6", "--evaluate", "false", *SMALL_MODEL)  # fmt: skip
    return folder, run / "checkpoints" / "best.ckpt"


def test_predict_a_folder_with_an_unreadable_patch(tmp_path, trained):
    folder, ckpt = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "River", inputs)
    (inputs / "broken.tif").write_text("not a tiff")
    out = tmp_path / "out"
    main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(out)])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 7
    (bad,) = [line for line in lines if "error" in line]
    assert bad["path"].endswith("broken.tif") and "broken.tif: cannot read as a GeoTIFF" in bad["error"]
    assert all(set(line["probabilities"]) == {"Forest", "River", "SeaLake"} for line in lines if line is not bad)
    assert len(list((out / "pictures").glob("River_*.png"))) == 6
    assert json.loads((out / "summary.json").read_text())["failed"] == [bad["path"]]


def test_predict_agrees_with_the_test_split(trained):
    folder, ckpt = trained
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(folder / sample_id) for sample_id in test.ids]
    for index, item in enumerate(inputs):
        torch.testing.assert_close(item.sample, test[index][0], rtol=0, atol=0)
        assert item.view.shape == (3, 16, 16)  # true colour: the run has B04, B03, B02
    predictions = predictor.predict(inputs)
    with torch.no_grad():
        expected = model(torch.stack([test[i][0] for i in range(len(test))])).softmax(1)
    got = torch.tensor([[p["probabilities"][c] for c in model.class_names] for p in predictions])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_predict_needs_only_the_checkpoint(tmp_path, trained):
    """The training folder gone, the run's bands, patch size and statistics come from the checkpoint."""
    folder, ckpt = trained
    patch = shutil.copy(folder / "Forest" / "Forest_2.tif", tmp_path / "patch.tif")
    expected = Predictor(ckpt, "cpu").predict([Predictor(ckpt, "cpu").read(patch)])
    hidden = folder.rename(folder.with_name("moved_away"))
    try:
        predictor = Predictor(ckpt, "cpu")
        assert predictor.predict([predictor.read(patch)]) == expected
        state = torch.load(ckpt, weights_only=True)["MultispectralDataModule"]
        assert torch.equal(predictor.datamodule.band_stats[0], state["band_mean"])
        assert predictor.datamodule.band_names == BANDS_RGBN and predictor.datamodule.input_shape == (1, 4, 16, 16)
    finally:
        hidden.rename(folder)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("bands", "B04B03B02B08", "bands is 'B04B03B02B08', expected a list of distinct band names"),
        ("band_mean", torch.zeros(2), "band_mean is a tensor of shape (2,), expected 4 numbers"),
        ("band_std", torch.zeros(4), "band_std is a tensor of shape (4,), expected 4 numbers (one a band), above 0"),
        ("patch_size", [0, 16], "patch_size is [0, 16], expected a height and a width"),
        ("dtype", "object", "dtype is 'object', expected uint16 or float32 or float64"),
    ],
)
def test_a_damaged_band_state_is_the_checkpoints_fault_not_the_inputs(tmp_path, trained, capsys, key, value, expected):
    """A checkpoint's band names, statistics, patch size and data type are checked where they
    are restored: they were taken as they stood, and every input then failed ("has no band B,
    0, 4, ...", a tensor size mismatch, a model output not finite)."""
    folder, ckpt = trained
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["MultispectralDataModule"][key] = value
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    for argv in (["predict", "--input", str(folder / "River")], ["evaluate", "--data.data_dir", str(folder)]):
        with pytest.raises(SystemExit):
            main([*argv, "--ckpt", str(tmp_path / "damaged.ckpt"), "--out", str(tmp_path / argv[0])])
        err = capsys.readouterr().err
        assert f"damaged.ckpt: its datamodule state cannot be used: {expected}" in err and err.count("\n") == 1


def test_read_input_normalises_with_the_restored_statistics(tmp_path):
    """Bands by name, the checkpoint's statistics, the layout; the view is the band mean where
    there is no red, green and blue."""
    path = write_tif(tmp_path / "patch.tif", band_cube(size=8))  # B08 holds 800, B8A (last) 1300
    datamodule = MultispectralDataModule(layout="channels")
    state = {"bands": ["B08", "B8A"], "band_mean": torch.tensor([700.0, 1300.0]), "band_std": torch.tensor([50.0, 2.0])}
    datamodule.restore_preprocessing(state | {"patch_size": [8, 8]})
    item = datamodule.read_input(path)
    assert item.sample.shape == (2, 8, 8) and item.sample[:, 0, 0].tolist() == [2.0, 0.0]
    assert item.view.shape == (1, 8, 8) and item.view[0, 0, 0] == 1050
    datamodule.restore_preprocessing(state | {"patch_size": [16, 16]})
    with pytest.raises(BadFileError, match="is 8x8 pixels, expected 16x16"):
        datamodule.read_input(path)


# --- BigEarthNet-S2: one folder per patch, one GeoTIFF per band at its own resolution ------------

#: BigEarthNet-S2's 12 bands (no B10) and their ground resolution in metres
BIGEARTHNET = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
               "B8A": 20, "B09": 60, "B11": 20, "B12": 20}  # fmt: skip


def write_bigearthnet(root, patches, size=24, seed=0):
    """``root/<patch>/<patch>_<band>.tif`` for each band at its native resolution (10 m bands
    ``size`` pixels a side, 20 m half, 60 m a sixth) with the patch's UTM transform, and
    ``<patch>_labels_metadata.json``, as BigEarthNet-S2 v1.0 ships them. ``patches`` maps a
    patch name to its labels; a patch's class shows in its red band (B04) and a bright square."""
    rng = np.random.default_rng(seed)
    classes = sorted({label for labels in patches.values() for label in labels})
    for n, (name, labels) in enumerate(patches.items()):
        folder = root / name
        x0, y0 = 500_000 + 1200 * n, 5_000_000
        for band, metres in BIGEARTHNET.items():
            side = size * 10 // metres
            cube = rng.integers(800, 1200, size=(1, side, side))
            c = classes.index(labels[0])
            cube[0, : side // 2, : side // 2] += 300 * c
            if band == "B04":
                cube += 600 * c
            write_tif(folder / f"{name}_{band}.tif", cube, transform=Affine(metres, 0, x0, 0, -metres, y0))
        metadata = {
            "labels": labels,
            "coordinates": {"ulx": x0, "uly": y0, "lrx": x0 + 10 * size, "lry": y0 - 10 * size},
            "projection": 'PROJCS["WGS 84 / UTM zone 32N"]',
            "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T32TQR_20170613T101608",
            "acquisition_date": "2017-06-13 10:10:31",
        }
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps(metadata))
    return root


def bigearthnet_patches(per_class=4, classes=("Coniferous forest", "Pastures")):
    return {f"S2A_MSIL1C_20170613T101031_{c}_{n}": [label] for c, label in enumerate(classes) for n in range(per_class)}


def test_an_upload_without_its_ending_is_told_a_geotiff_by_its_first_bytes():
    """Classic TIFF and BigTIFF (GDAL writes files past 4 GB so), either byte order."""
    for magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        assert geotiff_suffix(magic + b"\x08\x00") == ".tif"
    assert geotiff_suffix(b"\x89PNG\r\n") is None


def test_a_band_file_of_two_bands_is_refused(tmp_path):
    """A band folder's file holds its one band; a second one would be read past unseen."""
    root = write_bigearthnet(tmp_path / "ben", {"S2A_patch_0_0": ["Pastures"]}, size=12)
    write_tif(root / "S2A_patch_0_0" / "S2A_patch_0_0_B04.tif", np.full((2, 12, 12), 1000))
    with pytest.raises(BadFileError, match=r"S2A_patch_0_0_B04.tif: has 2 bands, expected one \(B04\)"):
        GeoTiffReader(None)(root / "S2A_patch_0_0")


def test_bigearthnet_bands_are_read_together_on_the_10m_grid(tmp_path):
    root = write_bigearthnet(tmp_path / "ben", {"S2A_patch_0_0": ["Pastures"]}, size=12)
    dm = MultispectralDataModule(data_dir=str(root))
    assert dm.class_names == ["Pastures"] and dm.size == (12, 12)
    assert dm.band_names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    cube = dm.reader(root / "S2A_patch_0_0")
    assert cube.shape == (12, 12, 12) and cube.dtype == np.uint16  # as the files store them
    with rasterio.open(root / "S2A_patch_0_0" / "S2A_patch_0_0_B01.tif") as src:  # 60 m: 2 x 2 pixels
        b01 = src.read(1).astype(np.float32)
    # bilinear: the corners keep their 60 m pixel's value, the pixels between blend its neighbours
    assert cube[0, 0, 0] == b01[0, 0] and cube[0, -1, -1] == b01[-1, -1]
    assert b01.min() <= cube[0].min() and cube[0].max() <= b01.max() and len(np.unique(cube[0])) > 4
    nearest = MultispectralDataModule(data_dir=str(root), resampling="nearest").reader(root / "S2A_patch_0_0")
    assert set(np.unique(nearest[0])) == set(np.unique(b01))
    assert "bilinear" in dm.describe_preprocessing()["read"]
    with pytest.raises(ValueError, match="data.resampling='linear': expected one of nearest, bilinear"):
        MultispectralDataModule(data_dir=str(root), resampling="linear")


def test_bigearthnet_folder_trains_with_the_default_config_and_predicts_a_patch(tmp_path, capsys):
    root = write_bigearthnet(tmp_path / "BigEarthNet-v1.0", bigearthnet_patches())
    run = fit("multispectral3d", tmp_path, "--data.data_dir", str(root), "--trainer.max_epochs", "1",
              "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["resampling"] == "bilinear"
    assert checkpoint["hyper_parameters"]["class_names"] == ["Coniferous forest", "Pastures"]
    patch = root / "S2A_MSIL1C_20170613T101031_1_3"
    main(["predict", "--ckpt", str(ckpt), "--input", str(patch), "--out", str(tmp_path / "out")])
    (line,) = map(json.loads, (tmp_path / "out" / "predictions.jsonl").open())
    assert line["path"] == str(patch) and set(line["probabilities"]) == {"Coniferous forest", "Pastures"}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no patch here")
    with pytest.raises(SystemExit):  # what an input would have been: a patch folder too
        main(["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "notes"), "--out", str(tmp_path / "none")])
    assert ".tiff, or a patch folder of one GeoTIFF a band); ignored 1 files" in capsys.readouterr().err


def test_bigearthnet_labels_come_from_labels_csv_or_one_label_metadata(tmp_path):
    patches = bigearthnet_patches(per_class=2)
    patches["S2A_MSIL1C_20170613T101031_0_0"] = ["Coniferous forest", "Transitional woodland/shrub"]
    patches["S2A_MSIL1C_20170613T101031_1_1"] = ["Pastures", "Coniferous forest"]
    root = write_bigearthnet(tmp_path / "ben", patches)
    assert MultispectralDataModule(data_dir=str(root)).multilabel  # several labels: multi-label
    with pytest.raises(ValueError, match="holds 2 labels, but data.multilabel=false") as caught:
        MultispectralDataModule(data_dir=str(root), multilabel=False)
    message = str(caught.value)
    assert "\n" not in message and "S2A_MSIL1C_20170613T101031_0_0_labels_metadata.json" in message
    # A labels.csv (patch,label; as Excel saves it, with a byte-order mark) gives one label per patch.
    rows = [("patch", "label"), *((name, labels[0]) for name, labels in patches.items())]
    (root / "labels.csv").write_text("\ufeff" + "\n".join(",".join(row) for row in rows) + "\n")
    dm = MultispectralDataModule(data_dir=str(root))
    assert dm.class_names == ["Coniferous forest", "Pastures"]
    assert sorted(dm.list_samples())[:2] == [
        ("S2A_MSIL1C_20170613T101031_0_0", 0),
        ("S2A_MSIL1C_20170613T101031_0_1", 0),
    ]
    # a patch's second row would silently replace the first's labels
    (root / "labels.csv").write_text("\n".join(",".join(row) for row in [*rows, (rows[1][0], "Pastures")]) + "\n")
    with pytest.raises(ConfigError, match=rf"labels.csv, line {len(rows) + 1}: '{rows[1][0]}' again \(line 2 has it\)"):
        MultispectralDataModule(data_dir=str(root))
    # a header alone, and a row without its patch, are named as such
    (root / "labels.csv").write_text("patch,label\n")
    with pytest.raises(ConfigError, match=r"labels.csv: no rows"):
        MultispectralDataModule(data_dir=str(root))
    (root / "labels.csv").write_text("\n".join(",".join(row) for row in [*rows, ("", "Pastures")]) + "\n")
    with pytest.raises(ConfigError, match=rf"labels.csv, line {len(rows) + 1}: empty patch or label"):
        MultispectralDataModule(data_dir=str(root))
    # without labels.csv, a metadata file's empty "labels" list is a bad file, not a patch of no class
    (root / "labels.csv").unlink()
    first = root / rows[1][0] / f"{rows[1][0]}_labels_metadata.json"
    first.write_text(json.dumps({"labels": []}))
    with pytest.raises(BadFileError, match=r'_labels_metadata.json: "labels" is \[\], expected a list of label names'):
        MultispectralDataModule(data_dir=str(root))


def test_on_bad_file_skip_leaves_bad_patches_out_with_one_warning(tmp_path):
    folder = make_folder(tmp_path / "user", dtype="float32")
    nan = band_cube(13, 16).astype("float32") / 10_000
    nan[0, 0, 0] = np.inf
    write_tif(folder / "River" / "River_2.tif", nan, "float32")
    (folder / "SeaLake" / "SeaLake_3.tif").write_text("not a tiff")
    dm = MultispectralDataModule(data_dir=str(folder), on_bad_file="skip")
    with pytest.warns(UserWarning, match="skipping 2 of 18 GeoTIFF patches") as caught:
        dm.setup("fit")
    (message,) = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert "River_2.tif: 1 of 3328 pixels are NaN or infinite" in message and "SeaLake_3.tif: cannot read" in message
    used = [i for s in ("train", "val", "test") for i in dm.datasets[s].ids]
    assert len(used) == 16 and "River/River_2.tif" not in used and "SeaLake/SeaLake_3.tif" not in used
    assert torch.isfinite(dm.band_stats[0]).all()
    with pytest.raises(ValueError, match="data.on_bad_file='ignore': expected 'error' or 'skip'"):
        MultispectralDataModule(data_dir=str(folder), on_bad_file="ignore")


# --- the generated multi-label default: mosaics of land covers in the BigEarthNet-S2 layout ---------


def test_bigearthnet_default_writes_band_folders_of_several_land_covers(tmp_path):
    dm = MultispectralDataModule(data_root=str(tmp_path), default="bigearthnet", default_size=3, default_patch=24)
    assert dm.multilabel and dm.class_names == list(MOSAIC_CLASSES) and dm.band_names == list(BIGEARTHNET)
    dm.prepare_data()
    assert dm.root == tmp_path / "multispectral3d-default=bigearthnet-default_patch=24-default_size=3"
    patches = sorted(p for p in dm.root.iterdir() if p.is_dir())
    assert len(patches) == 3 * len(MOSAIC_CLASSES)
    first = patches[0]
    for band, metres in BIGEARTHNET.items():  # each band at its native resolution over one footprint
        with rasterio.open(first / f"{first.name}_{band}.tif") as src:
            assert src.count == 1 and src.dtypes[0] == "uint16" and src.crs.to_epsg() == 32632
            assert src.res == (metres, metres) and src.width == 24 * 10 // metres
    labels = [json.loads((p / f"{p.name}_labels_metadata.json").read_text())["labels"] for p in patches]
    assert any(len(found) > 1 for found in labels) and all(set(found) <= set(MOSAIC_CLASSES) for found in labels)
    samples = dict(dm.list_samples())
    assert np.array_equal(samples[first.name], [c in labels[0] for c in MOSAIC_CLASSES])
    dm.setup("fit")
    x, y = dm.datasets["train"][0]
    assert x.shape == (1, 12, 24, 24) and y.dtype == np.float32 and y.shape == (len(MOSAIC_CLASSES),)
    with pytest.raises(ValueError, match="data.default='ben': expected eurosat or bigearthnet"):
        MultispectralDataModule(default="ben")
    with pytest.raises(ValueError, match="data.multilabel=false: the bigearthnet default"):
        MultispectralDataModule(default="bigearthnet", multilabel=False)


def test_mosaic_labels_are_the_covers_over_a_tenth_of_the_patch():
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(30):
        cube, labels, shares = mosaic(32, rng)
        assert cube.shape == (13, 32, 32) and sum(shares.values()) == pytest.approx(1)
        assert labels == [c for c in MOSAIC_CLASSES if shares.get(c, 0) >= 0.1]
        counts.append(len(labels))
    assert set(counts) == {1, 2, 3}


def test_bigearthnet_default_trains_one_epoch_and_baselines_score_it(tmp_path):
    run = fit("multispectral3d", tmp_path, "--data.default", "bigearthnet", "--data.default_size", "6",
              "--data.default_patch", "24", "--trainer.max_epochs", "1", "--evaluate", "false",
              *SMALL_MODEL)  # fmt: skip
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["multilabel"] is True
    assert checkpoint["hyper_parameters"]["class_names"] == list(MOSAIC_CLASSES)
    assert "val/map_macro" in (run / "metrics.csv").read_text().splitlines()[0]
    scores = baselines.main(["--data_root", str(tmp_path / "data"), "--default", "bigearthnet",
                             "--default_size", "6", "--default_patch", "24"])  # fmt: skip
    assert set(scores) == {f"{name}, {average}" for name in ("label frequency", "band means (logistic regression)")
                           for average in ("macro mAP", "micro mAP")}  # fmt: skip
    assert all(0 < value <= 1 for value in scores.values())
