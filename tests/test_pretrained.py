"""Weight files as torchvision, timm, MONAI and TorchGeo publish them, into our reference backbones.

Nothing is downloaded: each test builds the library's own network with random weights, saves
it the way that library publishes weights, loads the file into our backbone and compares the
library's stage features with ours on the same input."""

import pytest
import torch
from torch import nn

from cnnsuite.backbone import build_backbone
from cnnsuite.errors import BadFileError, ConfigError
from cnnsuite.training.transfer import backbone_state, transfer_backbone


def randomise_batchnorm(net: nn.Module) -> None:
    """Running statistics unlike the defaults, so that copying them shows in eval-mode features."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def resnet_stages(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """layer1..layer4 of a torchvision-layout ResNet (torchvision, timm and MONAI name them alike)."""
    act = getattr(net, "relu", None) or getattr(net, "act1", None) or net.act
    x = net.maxpool(act(net.bn1(net.conv1(x))))
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


def loads_like_the_library(
    library: nn.Module,
    ours: nn.Module,
    weights: str,
    x: torch.Tensor,
    stages=resnet_stages,
    unused: tuple[str, ...] = ("fc.bias", "fc.weight"),
) -> None:
    """``weights`` loads whole into ``ours``, names the library's classifier ``unused``, and our
    stage features are the library's (``stages(library, x)``)."""
    report = transfer_backbone(ours, backbone_state(weights))
    assert report.missing == [] and report.mismatched == [], report.summary()
    assert report.unused == sorted(unused)  # the classifier: named, not part of the backbone
    library.eval(), ours.eval()
    with torch.no_grad():
        theirs, mine = stages(library, x), ours(x)
    assert len(mine) == len(theirs)
    for stage, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        assert a.shape == b.shape, stage
        assert (a - b).abs().max().item() <= 1e-5, stage


@pytest.mark.parametrize(
    ("arch", "file"), [("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-0676ba61.pth")]
)
def test_torchvision_state_dict_gives_torchvision_features(tmp_path, arch, file):
    import torchvision

    library = getattr(torchvision.models, arch)(weights=None)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / file)  # how torchvision's files are made
    ours = build_backbone(f"torchvision_{arch}", 2, 3)
    loads_like_the_library(library, ours, f"torchvision:{tmp_path / file}", torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize(
    ("arch", "file"),
    [
        ("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth"),
        ("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth"),
    ],
)
def test_torchvision_mobilenet_v3_state_dict_gives_the_features_its_detectors_take(tmp_path, arch, file):
    """Our MobileNetV3 stages are the feature maps torchvision's detection backbones return
    (``_mobilenet_extractor``: the stem, each strided block's output and the last convolution)."""
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    library = getattr(torchvision.models, arch)(weights=None)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / file)  # how torchvision's files are made

    def detector_stages(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        body = _mobilenet_extractor(net, fpn=True, trainable_layers=0, returned_layers=list(range(6))).body
        return list(body(x).values())

    ours = build_backbone(f"torchvision_{arch}", 2, 3)
    assert ours.strides == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (32, 32)]
    unused = ("classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight")
    x = torch.randn(2, 3, 64, 64)
    loads_like_the_library(library, ours, f"torchvision:{tmp_path / file}", x, detector_stages, unused)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_resnet18_file_gives_timm_features(tmp_path, fmt):
    timm = pytest.importorskip("timm")  # a dev dependency
    from safetensors.torch import save_file

    library = timm.create_model("resnet18", pretrained=False)
    randomise_batchnorm(library)
    if fmt == "safetensors":  # timm's hub files: model.safetensors
        save_file(library.state_dict(), tmp_path / "model.safetensors")
        path = tmp_path / "model.safetensors"
    else:
        torch.save(library.state_dict(), tmp_path / "pytorch_model.bin")
        path = tmp_path / "pytorch_model.bin"
    ours = build_backbone("torchvision_resnet18", 2, 3)
    loads_like_the_library(library, ours, f"timm:{path}", torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("layout", ["monai", "medicalnet"])
def test_monai_3d_resnet18_state_dict_gives_monai_features(tmp_path, layout):
    from monai.networks.nets import resnet18

    library = resnet18(spatial_dims=3, n_input_channels=1)
    randomise_batchnorm(library)
    state = library.state_dict()
    if layout == "medicalnet":  # MedicalNet's files: a DataParallel model's state dict under "state_dict"
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, tmp_path / "resnet_18.pth")
    ours = build_backbone("monai_resnet18", 3, 1)
    loads_like_the_library(library, ours, f"monai:{tmp_path / 'resnet_18.pth'}", torch.randn(1, 1, 32, 32, 32))


def test_monai_densenet121_state_dict_gives_monai_features(tmp_path):
    """MONAI's DenseNet-121 ``features`` load whole into ``monai_densenet121``'s one stage
    (its ``features`` and the ReLU MONAI's classifier starts with); the classifier is named unused."""
    from monai.networks.nets import DenseNet121

    library = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / "densenet121.pth")

    def features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        return [net.class_layers.relu(net.features(x))]

    ours = build_backbone("monai_densenet121", 2, 1)
    unused = ("class_layers.out.bias", "class_layers.out.weight")
    x = torch.randn(2, 1, 64, 64)
    loads_like_the_library(library, ours, f"monai:{tmp_path / 'densenet121.pth'}", x, features, unused)


def test_torchgeo_13_band_resnet18_gives_its_features(tmp_path):
    """TorchGeo's Sentinel-2 ResNet-18 files are timm state dicts of a 13-channel resnet18."""
    timm = pytest.importorskip("timm")
    library = timm.create_model("resnet18", in_chans=13, pretrained=False)
    randomise_batchnorm(library)
    path = tmp_path / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    torch.save(library.state_dict(), path)
    ours = build_backbone("torchvision_resnet18", 2, 13)
    loads_like_the_library(library, ours, f"torchgeo:{path}", torch.randn(2, 13, 64, 64))


def test_a_torchvision_layout_file_is_recognised_without_a_family(tmp_path):
    import torchvision

    library = torchvision.models.resnet18(weights=None)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / "resnet18.pth")
    ours = build_backbone("torchvision_resnet18", 2, 3)
    loads_like_the_library(library, ours, str(tmp_path / "resnet18.pth"), torch.randn(1, 3, 64, 64))


TORCHVISION_LAYOUT = {"widths": [64, 128, 256, 512], "stem_kernel": 7, "stem_stride": 2, "stem_pool": "max"}


@pytest.mark.parametrize(
    ("arch", "kwargs"), [("resnet18", {}), ("resnet50", {"block": "bottleneck", "blocks": [3, 4, 6, 3]})]
)
def test_our_resnet_in_torchvisions_layout_takes_a_torchvision_file(tmp_path, arch, kwargs):
    import torchvision

    library = getattr(torchvision.models, arch)(weights=None)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / f"{arch}.pth")
    ours = build_backbone("resnet", 2, 3, **TORCHVISION_LAYOUT, **kwargs)
    loads_like_the_library(library, ours, f"torchvision:{tmp_path / f'{arch}.pth'}", torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    ("backbone", "kwargs", "depth"),
    [
        ("resnet", {**TORCHVISION_LAYOUT, "stem_kernel": [5, 7, 7], "stem_stride": [1, 2, 2],
                    "strides": [1, [1, 2, 2], [1, 2, 2], [1, 2, 2]]}, 64),
        ("monai_resnet18", {"conv1_t_size": (5, 7, 7), "conv1_t_stride": (1, 2, 2), "bias_downsample": False}, 256),
    ],
    ids=["ours", "monai"],
)  # fmt: skip
def test_a_torchvision_file_inflated_into_a_3d_resnet_gives_the_2d_response_on_a_static_clip(
    tmp_path, backbone, kwargs, depth
):
    """I3D from torchvision's file: our 3D ``resnet`` and MONAI's 3D ResNet-18, each with
    torchvision's geometry (stem stride 1×2×2, no downsampling bias), take every kernel inflated;
    on an image repeated along depth, each stage's central depth index (beyond the reach of the
    depth padding) is torchvision's."""
    import torchvision

    library = torchvision.models.resnet18(weights=None)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    ours = build_backbone(backbone, 3, 3, **kwargs)
    report = transfer_backbone(ours, backbone_state(f"torchvision:{tmp_path / 'resnet18-f37072fd.pth'}"))
    assert report.missing == [] and report.mismatched == [] and len(report.inflated) == 20, report.summary()
    library.eval(), ours.eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        theirs, mine = resnet_stages(library, image), ours(image.unsqueeze(2).expand(-1, -1, depth, -1, -1))
    for a, b in zip(theirs, mine, strict=True):
        torch.testing.assert_close(b[:, :, b.shape[2] // 2], a, rtol=1e-4, atol=1e-5)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test: a name is resolved from disk alone."""
    import socket
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was reached: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_a_torchvision_weights_name_is_the_file_in_torchs_hub_cache(tmp_path, monkeypatch, no_network):
    """``torchvision:ResNet18_Weights.IMAGENET1K_V1`` is the file torch's hub cache would hold;
    nothing is downloaded, and a missing file is one line saying which file to put where."""
    import torchvision

    from cnnsuite.errors import MissingFileError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(MissingFileError) as info:
        backbone_state("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    message = str(info.value)
    assert "\n" not in message and str(cached) in message, message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    with pytest.raises(ConfigError, match="ResNet18_Weights.IMAGENET9K: not a torchvision weights name"):
        backbone_state("torchvision:ResNet18_Weights.IMAGENET9K")

    library = torchvision.models.resnet18(weights=None)
    randomise_batchnorm(library)
    cached.parent.mkdir(parents=True)
    torch.save(library.state_dict(), cached)
    ours = build_backbone("torchvision_resnet18", 2, 3)
    loads_like_the_library(library, ours, "torchvision:ResNet18_Weights.IMAGENET1K_V1", torch.randn(1, 3, 64, 64))


def test_a_timm_name_is_the_file_in_the_hugging_face_cache(tmp_path, monkeypatch, no_network):
    """``timm:resnet18.a1_in1k`` is the ``model.safetensors`` the Hugging Face cache holds for timm's
    weights of that name (repository ``timm/resnet18.a1_in1k``, the snapshot ``refs/main`` names);
    a missing one is one line naming the file and its URL, and nothing is downloaded."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from cnnsuite.errors import MissingFileError

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    message = one_line_error(
        "timm:resnet18.a1_in1k", repo / "snapshots" / "main" / "model.safetensors", MissingFileError
    )
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message, message
    assert "nothing is downloaded" in message

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # HF_HUB_CACHE wins over HF_HOME
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    one_line_error("timm:resnet18.a1_in1k", snapshot / "model.safetensors", MissingFileError)
    library = timm.create_model("resnet18", pretrained=False)
    randomise_batchnorm(library)
    snapshot.mkdir(parents=True)
    save_file(library.state_dict(), snapshot / "model.safetensors")
    ours = build_backbone("torchvision_resnet18", 2, 3)
    loads_like_the_library(library, ours, "timm:resnet18.a1_in1k", torch.randn(1, 3, 64, 64))


def test_a_timm_file_name_is_still_a_path(tmp_path, monkeypatch):
    """``timm:model.safetensors`` names a file, not timm weights called ``model.safetensors``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="timm:model.safetensors: no such file"):
        backbone_state("timm:model.safetensors")


@pytest.mark.parametrize(
    ("name", "arch", "bands", "file"),
    [
        ("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18", 13, "resnet18_sentinel2_all_moco-59bfdff9.pth"),
        ("ResNet50_Weights.SENTINEL2_ALL_MOCO", "resnet50", 13, "resnet50_sentinel2_all_moco-df8b932e.pth"),
        ("ResNet18_Weights.SENTINEL2_RGB_SECO", "resnet18", 3, "resnet18_sentinel2_rgb_seco-cefca942.pth"),
    ],
)
def test_a_torchgeo_weights_name_is_the_file_in_torchs_hub_cache(
    tmp_path, monkeypatch, no_network, name, arch, bands, file
):
    """TorchGeo's ``get_state_dict`` keeps its files where torchvision's go; a missing one is
    one line naming the file and TorchGeo's URL, and nothing is downloaded."""
    timm = pytest.importorskip("timm")
    from cnnsuite.errors import MissingFileError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / file
    message = one_line_error(f"torchgeo:{name}", cached, MissingFileError)
    assert "/resolve/" in message and message.rstrip().endswith(f"/{file} there"), message

    library = timm.create_model(arch, in_chans=bands, pretrained=False)  # as TorchGeo builds them
    randomise_batchnorm(library)
    cached.parent.mkdir(parents=True)
    torch.save(library.state_dict(), cached)
    ours = build_backbone(f"torchvision_{arch}", 2, bands)
    loads_like_the_library(library, ours, f"torchgeo:{name}", torch.randn(1, bands, 64, 64))


def test_an_unknown_torchgeo_weights_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ResNet18_Weights.IMAGENET1K_V1: not a TorchGeo Sentinel-2 ResNet weights"):
        backbone_state("torchgeo:ResNet18_Weights.IMAGENET1K_V1")


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def one_line_error(weights: str, file, kind: type = BadFileError) -> str:
    with pytest.raises(kind) as info:
        backbone_state(weights)
    message = str(info.value)
    assert "\n" not in message and str(file) in message, message
    return message


def test_bad_weight_files_are_one_line_errors_naming_the_file(tmp_path, capsys):
    import torchvision
    from monai.networks.nets import resnet18
    from safetensors.torch import save_file

    state = torchvision.models.resnet18(weights=None).state_dict()
    evil = tmp_path / "resnet18-evil.pth"
    torch.save({**state, "x": Payload()}, evil)
    assert "Unsupported global" in one_line_error(f"torchvision:{evil}", evil)
    assert "pickled code ran" not in capsys.readouterr().out

    torch.save(state, tmp_path / "whole.pth")
    cut = tmp_path / "resnet18-cut.pth"
    cut.write_bytes((tmp_path / "whole.pth").read_bytes()[:100_000])
    one_line_error(f"torchvision:{cut}", cut)
    save_file(state, tmp_path / "whole.safetensors")
    cut = tmp_path / "model-cut.safetensors"
    cut.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:100_000])
    assert "safetensors" in one_line_error(f"timm:{cut}", cut)

    medical = tmp_path / "resnet_18_23dataset.pth"
    torch.save(resnet18(spatial_dims=3, n_input_channels=1).state_dict(), medical)
    assert "monai:" in one_line_error(f"torchvision:{medical}", medical)  # a 3D file is no torchvision file

    densenet = tmp_path / "densenet121.pth"
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), densenet)
    assert "torchvision" in one_line_error(str(densenet), densenet, ConfigError)  # fits no family: they are listed
    assert "ResNet" in one_line_error(f"torchvision:{densenet}", densenet)
    mobile = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), mobile)
    assert "MONAI DenseNet" in one_line_error(f"monai:{mobile}", mobile)  # MONAI publishes no MobileNet


def test_an_unknown_family_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="keras: unknown weights family; expected one of torchvision, timm"):
        backbone_state(f"keras:{tmp_path / 'x.h5'}")


def test_a_task_starts_from_a_published_file_and_logs_what_it_left(tmp_path, caplog):
    """``--model.backbone_weights monai:FILE`` in a volume classifier: the backbone holds MONAI's
    weights, and the log names the classifier the file brought and the backbone did not take."""
    from cnnsuite.tasks.biomedical3d.module import Biomedical3DModule
    from monai.networks.nets import resnet18

    caplog.set_level("INFO")
    library = resnet18(spatial_dims=3, n_input_channels=1)
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / "resnet_18.pth")
    task = Biomedical3DModule(
        num_classes=2, spatial_dims=3, backbone="monai_resnet18", backbone_weights=f"monai:{tmp_path / 'resnet_18.pth'}"
    )
    ours = task.feature_backbone().state_dict()
    assert torch.equal(ours["stages.2.0.1.conv2.weight"], library.state_dict()["layer3.1.conv2.weight"])
    assert torch.equal(ours["stages.0.1.running_var"], library.state_dict()["bn1.running_var"])
    assert "0 mismatched, 0 missing, 2 unused" in caplog.text
    assert "in the source only, unused: fc.bias, fc.weight" in caplog.text


#: Sentinel-2 L1C's bands in the order TorchGeo's all-band (SSL4EO-S12) files take them
TORCHGEO_S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def classifier_from(weights: str, bands: list[str]):
    from cnnsuite.training.classification import ClassificationModule

    model = ClassificationModule(
        num_classes=2, in_channels=len(bands), channel_names=bands, backbone="torchvision_resnet18",
        backbone_weights=weights,
    )  # fmt: skip
    return model.feature_backbone().eval().double()


def assert_same_features(theirs: list[torch.Tensor], mine: list[torch.Tensor]) -> None:
    """Compared in float64: float32 sums 13 channels' products in another order than 3 channels',
    which on random weights differs by ~1e-5 by itself."""
    for stage, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        assert a.shape == b.shape, stage
        assert (a - b).abs().max().item() <= 1e-5, stage


def test_an_rgb_file_into_13_bands_maps_r_g_b_onto_b04_b03_b02_by_name(tmp_path, caplog):
    """A 13-band model from torchvision's RGB file: B04, B03 and B02 take the R, G and B kernels,
    so an image put in those bands (the others zero) gives the RGB model's features."""
    import torchvision

    caplog.set_level("INFO")
    library = torchvision.models.resnet18(weights=None).eval()
    randomise_batchnorm(library)
    torch.save(library.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    ours = classifier_from(f"torchvision:{tmp_path / 'resnet18-f37072fd.pth'}", TORCHGEO_S2)
    library.double()
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    bands = torch.zeros(2, 13, 64, 64, dtype=torch.float64)
    for channel, band in enumerate(("B04", "B03", "B02")):
        bands[:, TORCHGEO_S2.index(band)] = image[:, channel]
    with torch.no_grad():
        assert_same_features(resnet_stages(library, image), ours(bands))
    kernel = library.state_dict()["conv1.weight"]
    first = ours.state_dict()["stages.0.0.weight"]
    torch.testing.assert_close(first[:, TORCHGEO_S2.index("B05")], kernel.mean(dim=1))  # a band it lacks: the mean
    assert "B02 <- B, B03 <- G, B04 <- R" in caplog.text
    assert "the mean of the source's 3 kernels: B01, B05, B06, B07, B08, B8A, B09, B10, B11, B12" in caplog.text


def test_a_13_band_torchgeo_file_into_a_band_subset_gives_each_band_its_kernel(tmp_path):
    timm = pytest.importorskip("timm")
    library = timm.create_model("resnet18", in_chans=13, pretrained=False).eval()
    randomise_batchnorm(library)
    path = tmp_path / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    torch.save(library.state_dict(), path)
    four = ["B02", "B03", "B04", "B08"]
    ours = classifier_from(f"torchgeo:{path}", four)
    library.double()
    x = torch.randn(2, 4, 64, 64, dtype=torch.float64)
    full = torch.zeros(2, 13, 64, 64, dtype=torch.float64)
    full[:, [TORCHGEO_S2.index(band) for band in four]] = x
    with torch.no_grad():
        assert_same_features(resnet_stages(library, full), ours(x))


@pytest.mark.parametrize("family", ["torchvision:", ""])
def test_a_published_file_with_non_finite_weights_is_a_one_line_error_naming_the_tensor(tmp_path, family):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "resnet18-nan.pth"
    torch.save(state, path)
    assert "non-finite weights (NaN or infinity) in conv1.weight" in one_line_error(f"{family}{path}", path)
