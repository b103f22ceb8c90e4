"""Tests of voxelopt.networks that need no shared data: layers, key names/shapes, batch-statistics
normalisation, the exact low-memory U-Net path, TorchScript geometry, and weights handling."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
try:
    import voxelopt  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "VoxelOptLib" / "src"))

from voxelopt.config import RegistrationConfig  # noqa: E402
from voxelopt.errors import ConfigError, InputError  # noqa: E402
from voxelopt.features.base import available_extractors, make_extractor  # noqa: E402
from voxelopt.networks import weights as W  # noqa: E402
from voxelopt.networks.layers import lattice, obelisk_sample  # noqa: E402
from voxelopt.networks.obelisk import ObeliskHybridTCIA  # noqa: E402
from voxelopt.networks.pdd import PDDFeatureNet, load_pdd  # noqa: E402
from voxelopt.networks.torchscript import TorchScriptExtractor  # noqa: E402
from voxelopt.networks.universal import UniversalExtractor, UniversalUNet, load_universal  # noqa: E402

CPU = torch.device("cpu")
# torch.jit.save/load are deprecated in recent PyTorch (still supported); the warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# ---------------------------------------------------------------------------------------- layers
def test_corner_and_centre_lattices():
    corner = lattice((2, 3, 5), centred=False, device=CPU).reshape(2, 3, 5, 3)
    centre = lattice((2, 3, 5), centred=True, device=CPU).reshape(2, 3, 5, 3)
    # last dim is (x, y, z) = (axis 2, axis 1, axis 0); axis 2 varies fastest
    assert torch.allclose(corner[0, 0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.allclose(corner[:, 0, 0, 2], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(centre[0, :, 0, 1], torch.tensor([-2 / 3, 0.0, 2 / 3]))
    assert torch.allclose(centre[:, 0, 0, 2], torch.tensor([-0.5, 0.5]))


def test_obelisk_sample_identity_shift_and_channel_order():
    torch.manual_seed(0)
    vol = torch.rand(1, 2, 5, 6, 7)
    pts = lattice((5, 6, 7), centred=False, device=CPU)
    one_voxel_x = 2.0 / (7 - 1)  # align_corners=True: one voxel along W
    offsets = torch.tensor([[0.0, 0.0, 0.0], [one_voxel_x, 0.0, 0.0]]).view(1, 2, 1, 1, 3)
    out = obelisk_sample(vol, pts, offsets, (5, 6, 7))
    assert out.shape == (1, 4, 5, 6, 7)
    # channel c*K + k: input channel c, offset k
    assert torch.allclose(out[0, 0], vol[0, 0], atol=1e-6)
    assert torch.allclose(out[0, 2], vol[0, 1], atol=1e-6)
    assert torch.allclose(out[0, 1, :, :, :-1], vol[0, 0, :, :, 1:], atol=1e-6)
    assert torch.allclose(out[0, 3, :, :, :-1], vol[0, 1, :, :, 1:], atol=1e-6)
    assert torch.all(out[0, 1, :, :, -1] == 0)  # zero padding outside


# ---------------------------------------------------------------------------------------- OBELISK
OBELISK_SHAPES = {  # from the published checkpoint's key list (feature_networks.md 1.4)
    "offset1": (1, 128, 1, 1, 3), "offset2": (1, 512, 1, 1, 3),
    "conv0.weight": (4, 1, 3, 3, 3), "conv1.weight": (16, 4, 3, 3, 3), "conv11.weight": (16, 16, 3, 3, 3),
    "conv2.weight": (32, 16, 3, 3, 3), "conv22.weight": (32, 32, 3, 3, 3), "conv3.weight": (32, 32, 3, 3, 3),
    "linear1a.weight": (128, 64, 1, 1, 1), "linear1b.weight": (32, 128, 1, 1, 1), "linear1c.weight": (32, 160, 1, 1, 1),
    "linear1d.weight": (32, 192, 1, 1, 1), "linear1e.weight": (16, 224, 1, 1, 1),
    "linear2a.weight": (128, 128, 1, 1, 1), "linear2e.weight": (32, 224, 1, 1, 1),
    "batch1d.running_var": (224,), "batch2a.weight": (128,), "batch6bU.bias": (32,),
    "conv6bU.weight": (32, 64, 3, 3, 3), "conv6U.weight": (12, 64, 3, 3, 3), "conv7U.weight": (9, 16, 3, 3, 3),
    "conv77U.weight": (9, 9, 1, 1, 1), "conv77U.bias": (9,), "batch7U.num_batches_tracked": (),
}


def test_obelisk_keys_and_shapes_match_the_checkpoint_layout():
    state = ObeliskHybridTCIA().state_dict()
    assert len(state) == 117
    for key, shape in OBELISK_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("linear") and k.endswith("bias") for k in state)


def test_obelisk_runs_on_multiples_of_8_and_rejects_other_sizes():
    net = ObeliskHybridTCIA().eval()
    with torch.inference_mode():
        logits, feats = net(torch.rand(1, 1, 16, 24, 40), return_features=True)
    assert logits.shape == (1, 9, 16, 24, 40) and feats["d72"].shape == (1, 12, 8, 12, 20)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 1, 96, 96, 100))


# ---------------------------------------------------------------------------------------- PDD
def _random_state(module: nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


@pytest.mark.parametrize("hidden,groups,w1", [(96, 1, (96, 192, 1, 1, 1)), (48, 4, (48, 48, 1, 1, 1))])
def test_pdd_variants_detected_from_shapes(tmp_path, monkeypatch, hidden, groups, w1):
    net = PDDFeatureNet(hidden, groups, centred=(hidden == 96))
    state = net.state_dict()
    assert len(state) == 21 and tuple(state["layer1.weight"].shape) == w1 and tuple(state["offsets"].shape) == (2, 48, 3)
    path = tmp_path / "pdd.pth"
    torch.save(_random_state(net), path)
    loaded = load_pdd(str(path), CPU)
    assert loaded.centred == (hidden == 96) and loaded.layer1.groups == groups
    out = loaded(torch.randn(1, 1, 20, 16, 13))
    assert out.shape == (1, 24, 6, 5, 4)


@pytest.mark.parametrize("groups,batch", [(1, 1), (4, 2), (2, 1)])
def test_linear_of_samples_is_the_convolution_of_the_sample_channels(groups, batch):
    """A 1x1x1 convolution (grouped or not) of obelisk_sample's C*K channels, computed from the
    (B, C, N, K) samples without reordering them: same values, channels-last."""
    from voxelopt.networks.layers import deformable_samples, linear_of_samples

    g = torch.Generator().manual_seed(groups)
    volume = torch.rand(batch, 4, 9, 8, 7, generator=g)
    points = lattice((3, 4, 2), centred=True, device=CPU)
    offsets = (torch.rand(1, 6, 1, 1, 3, generator=g) - 0.5) * 0.4
    conv = nn.Conv3d(24, 10 if groups != 4 else 8, 1, groups=groups, bias=False)
    expected = conv(obelisk_sample(volume, points, offsets, (3, 4, 2)))
    out = linear_of_samples(deformable_samples(volume, points, offsets), conv, (3, 4, 2))
    assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="1x1x1 convolution without bias"):
        linear_of_samples(deformable_samples(volume, points, offsets), nn.Conv3d(24, 8, 1), (3, 4, 2))


@pytest.mark.parametrize("hidden,groups", [(96, 1), (48, 4)])
def test_pdd_forward_is_the_published_formulation(hidden, groups):
    """The network's outputs equal layer1 applied to the plus-minus samples as C*K channels
    (the published forward), for both variants."""
    net = PDDFeatureNet(hidden, groups, centred=(hidden == 96))
    net.load_state_dict(_random_state(net, seed=hidden))
    net.eval()
    x = torch.randn(1, 1, 26, 21, 17, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shape = net.output_shape(tuple(x.shape[2:]))
        t = F.relu(net.batch0(net.layer0(F.avg_pool3d(x, 3, stride=2, padding=1))))
        points = lattice(shape, centred=net.centred, device=CPU)
        plus = obelisk_sample(t, points, net.offsets[0].view(1, 48, 1, 1, 3), shape)
        minus = obelisk_sample(t, points, net.offsets[1].view(1, 48, 1, 1, 3), shape)
        h = F.relu(net.batch2(net.layer2(F.relu(net.batch1(net.layer1(plus - minus))))))
        assert torch.allclose(net(x), net.layer3(h), atol=1e-5)


# ---------------------------------------------------------------------------------------- Universal
def universal_checkpoint(seed: int = 0):
    """A synthetic checkpoint in the published format, written from the documented key list
    (feature_networks.md 3.2), independently of the module under test."""
    g = torch.Generator().manual_seed(seed)
    state = {"module.organ_embedding": torch.randn(32, 512, generator=g)}

    def conv(prefix, cout, cin, k=3):
        state[prefix + ".weight"] = torch.randn(cout, cin, k, k, k, generator=g) * (2.0 / (cin * k ** 3)) ** 0.5
        state[prefix + ".bias"] = torch.randn(cout, generator=g) * 0.1

    def bn(prefix, c):
        state[prefix + ".weight"] = 1.0 + 0.2 * torch.randn(c, generator=g)
        state[prefix + ".bias"] = 0.2 * torch.randn(c, generator=g)
        state[prefix + ".running_mean"] = torch.randn(c, generator=g) * 100  # must never be used
        state[prefix + ".running_var"] = torch.rand(c, generator=g) * 100 + 50
        state[prefix + ".num_batches_tracked"] = torch.tensor(1000)

    stages = [("down_tr64", [(32, 1), (64, 32)]), ("down_tr128", [(64, 64), (128, 64)]),
              ("down_tr256", [(128, 128), (256, 128)]), ("down_tr512", [(256, 256), (512, 256)]),
              ("up_tr256", [(256, 768), (256, 256)]), ("up_tr128", [(128, 384), (128, 128)]),
              ("up_tr64", [(64, 192), (64, 64)])]
    for name, convs in stages:
        if name.startswith("up"):
            c = {"up_tr256": 512, "up_tr128": 256, "up_tr64": 128}[name]
            state[f"module.backbone.{name}.up_conv.weight"] = torch.randn(c, c, 2, 2, 2, generator=g) * (1.0 / c) ** 0.5
            state[f"module.backbone.{name}.up_conv.bias"] = torch.randn(c, generator=g) * 0.1
        for i, (cout, cin) in enumerate(convs):
            conv(f"module.backbone.{name}.ops.{i}.conv1", cout, cin)
            bn(f"module.backbone.{name}.ops.{i}.bn1", cout)
    state["module.precls_conv.0.weight"] = 1.0 + 0.2 * torch.randn(64, generator=g)
    state["module.precls_conv.0.bias"] = 0.2 * torch.randn(64, generator=g)
    conv("module.precls_conv.2", 8, 64, k=1)
    state["module.GAP.0.weight"] = torch.randn(512, generator=g)
    state["module.GAP.0.bias"] = torch.randn(512, generator=g)
    state["module.GAP.3.weight"] = torch.randn(256, 512, 1, 1, 1, generator=g)
    state["module.GAP.3.bias"] = torch.randn(256, generator=g)
    state["module.controller.weight"] = torch.randn(153, 512, 1, 1, 1, generator=g)
    state["module.controller.bias"] = torch.randn(153, generator=g)
    state["module.text_to_vision.weight"] = torch.randn(256, 512, generator=g)
    state["module.text_to_vision.bias"] = torch.randn(256, generator=g)
    return {"net": state, "epoch": 300, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}


@pytest.fixture(scope="module")
def universal_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("universal") / "unet.pth"
    ckpt = universal_checkpoint()
    assert len(ckpt["net"]) == 117
    torch.save(ckpt, path)
    return path, ckpt


def test_universal_loads_published_layout_strictly(universal_file):
    path, ckpt = universal_file
    net = load_universal(str(path), CPU)
    assert sum(p.numel() for p in net.parameters()) == 19074248  # 19.07 M, as documented
    assert len(net.state_dict()) == 108
    assert torch.equal(net.up_tr64.ops[0].conv1.weight, ckpt["net"]["module.backbone.up_tr64.ops.0.conv1.weight"])
    assert torch.equal(net.precls_conv[2].bias, ckpt["net"]["module.precls_conv.2.bias"])


def test_universal_wrong_shape_is_a_clear_error(tmp_path):
    ckpt = universal_checkpoint()
    ckpt["net"]["module.precls_conv.2.weight"] = torch.zeros(16, 64, 1, 1, 1)
    del ckpt["net"]["module.backbone.up_tr64.up_conv.bias"]
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(W.WeightsError, match=r"missing keys up_tr64\.up_conv\.bias.*wrong shapes precls_conv\.2\.weight"):
        load_universal(str(path), CPU)


def _reference_unet(net: UniversalUNet) -> nn.Module:
    """The same weights in stock PyTorch modules whose BatchNorm3d is in training mode."""

    def luconv(unit):
        bn = nn.BatchNorm3d(unit.bn1.num_features)
        bn.load_state_dict(unit.bn1.state_dict())
        return nn.Sequential(unit.conv1, bn, nn.ReLU()).train()

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleDict({n: nn.Sequential(luconv(getattr(net, n).ops[0]), luconv(getattr(net, n).ops[1]))
                                         for n in ("down_tr64", "down_tr128", "down_tr256", "down_tr512",
                                                   "up_tr256", "up_tr128", "up_tr64")})

        def forward(self, x):
            s = self.stages
            a = s["down_tr64"](x)
            b = s["down_tr128"](F.max_pool3d(a, 2))
            c = s["down_tr256"](F.max_pool3d(b, 2))
            d = s["down_tr512"](F.max_pool3d(c, 2))
            d = s["up_tr256"](torch.cat((net.up_tr256.up_conv(d), c), 1))
            d = s["up_tr128"](torch.cat((net.up_tr128.up_conv(d), b), 1))
            d = s["up_tr64"](torch.cat((net.up_tr64.up_conv(d), a), 1))
            return net.precls_conv(d)

    return Ref()


def test_universal_uses_batch_statistics_in_eval_mode(universal_file):
    path, _ = universal_file
    net = load_universal(str(path), CPU)  # eval mode, garbage running statistics
    torch.manual_seed(1)
    x = torch.rand(1, 1, 16, 24, 16)
    with torch.no_grad():
        ours = net(x)
        ref = _reference_unet(net)(x)
    assert ours.shape == (1, 8, 16, 24, 16)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    # and the running buffers are not what it uses: eval-mode stock BN gives something else
    eval_ref = _reference_unet(net).eval()
    with torch.no_grad():
        assert (eval_ref(x) - ours).abs().max() > 1.0


def test_universal_low_memory_path_equals_whole_volume(universal_file):
    path, _ = universal_file
    net = load_universal(str(path), CPU)
    torch.manual_seed(2)
    x = torch.rand(1, 1, 24, 16, 32)
    with torch.no_grad():
        whole = net(x)
        for slab in (3, 8, 64):
            low = net.forward_low_memory(x, slab=slab)
            assert torch.allclose(whole, low, atol=1e-4, rtol=1e-4), slab


def test_universal_extractor_maps_back_to_image_grid(universal_file):
    path, _ = universal_file
    image = sitk.GetImageFromArray(np.random.default_rng(0).uniform(-1000, 400, (10, 12, 14)).astype(np.float32))
    image.SetSpacing((3.0, 2.5, 4.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    ex = UniversalExtractor(str(path))
    f = ex.extract(image, CPU)
    assert f.shape == (8, 10, 12, 14) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert ex.cache_key().startswith("universal:")


def test_universal_needs_a_path_and_refuses_other_networks_files(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path))
    with pytest.raises(W.WeightsError, match="--weights"):
        UniversalExtractor(None)
    other = tmp_path / "renamed.pth"
    other.write_bytes(b"bytes of some other network's checkpoint")
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "pdd_fake.pth", W.WeightsInfo("pdd_fake.pth", digest, "pdd"))
    with pytest.raises(W.WeightsError, match="checkpoint pdd_fake.pth of the 'pdd' network, not a 'universal'"):
        UniversalExtractor(str(other))


# ---------------------------------------------------------------------------------------- TorchScript
class _HalfRes(nn.Module):
    def forward(self, x):
        return torch.cat((F.avg_pool3d(x, 2), torch.ones_like(F.avg_pool3d(x, 2))), dim=1)


def _script(tmp_path, meta):
    path = tmp_path / "model.pt"
    extra = {"voxelopt.json": json.dumps(meta)} if meta is not None else {}
    torch.jit.save(torch.jit.script(_HalfRes()), str(path), _extra_files=extra)
    return path


def _ramp_image():
    """HU = 10 * (physical x in mm) on a rotated, anisotropic grid (ramp along the world x axis)."""
    size = (20, 16, 12)
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetDirection((0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    image.SetOrigin((-20.0, 5.0, 3.0))
    arr = np.zeros(size[::-1], np.float32)
    for z in range(size[2]):
        for y in range(size[1]):
            for x in range(size[0]):
                arr[z, y, x] = 10.0 * image.TransformIndexToPhysicalPoint((x, y, z))[0]
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out, arr


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "IRP"])
def test_torchscript_output_at_half_resolution_is_mapped_back(tmp_path, orientation):
    image, arr = _ramp_image()
    path = _script(tmp_path, {"orientation": orientation, "spacing_mm": None, "hu_window": [-1000.0, 1000.0]})
    ex = TorchScriptExtractor(str(path))
    f = ex.extract(image, CPU).numpy()
    expected = np.clip((arr + 1000.0) / 2000.0, 0, 1)
    assert f.shape == (2,) + arr.shape
    # a linear ramp survives 2x average pooling and trilinear interpolation exactly, away from borders
    assert np.abs(f[0, 2:-2, 2:-2, 2:-2] - expected[2:-2, 2:-2, 2:-2]).max() < 1e-4
    assert np.allclose(f[1], 1.0)


def test_torchscript_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="orientation"):
        TorchScriptExtractor(str(_script(tmp_path, {"orientation": "LLS"})))
    with pytest.raises(ConfigError, match="unknown voxelopt.json key"):
        TorchScriptExtractor(str(_script(tmp_path, {"spacing": 2})))
    not_script = tmp_path / "state.pt"
    torch.save({"a": torch.zeros(2)}, not_script)
    with pytest.raises(W.WeightsError, match="not a TorchScript model"):
        TorchScriptExtractor(str(not_script))
    with pytest.raises(ConfigError, match="--weights"):
        TorchScriptExtractor(None)
    ex = TorchScriptExtractor(str(_script(tmp_path, None)))  # defaults
    with pytest.raises(InputError, match="must be a 3-D image"):
        ex.extract(sitk.Image(8, 8, sitk.sitkFloat32), CPU)


class _Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > 0:
            raise RuntimeError("this model only takes 2-D slices")
        return x


class _Empty(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :0]


@pytest.mark.parametrize("model, message", [(_Raises, "the model failed on an input of shape.*only takes 2-D slices"),
                                            (_Empty, "non-empty float tensor")])
def test_torchscript_model_that_fails_is_a_weights_error(tmp_path, model, message):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model()), str(path))
    image, _ = _ramp_image()
    with pytest.raises(W.WeightsError, match=message):
        TorchScriptExtractor(str(path)).extract(image, CPU)


# ---------------------------------------------------------------------------------------- weights
KNOWN = "obeliskhybrid_tcia_fold1.pth"


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path))
    assert W.cache_dir() == tmp_path
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR)
    assert W.cache_dir() == Path("~/.cache/voxelopt").expanduser()


def test_tampered_cached_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path))
    (tmp_path / KNOWN).write_bytes(b"not the real weights")
    with pytest.raises(W.WeightsError, match="checksum mismatch.*tampered"):
        W.resolve_weights("obelisk", None, KNOWN, allow_download=False)


def test_unknown_user_file_refused_unless_allowed(monkeypatch, tmp_path):
    path = tmp_path / "my_obelisk.pth"
    torch.save(ObeliskHybridTCIA().state_dict(), path)
    with pytest.raises(W.WeightsError, match="not a known 'obelisk' checkpoint"):
        W.resolve_weights("obelisk", str(path), KNOWN)
    monkeypatch.setenv(W.ENV_ALLOW_UNVERIFIED, "1")
    found, digest = W.resolve_weights("obelisk", str(path), KNOWN)
    assert found == path and digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_user_path_and_directory(tmp_path):
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.resolve_weights("obelisk", str(tmp_path / "nope.pth"), KNOWN)
    with pytest.raises(W.WeightsError, match=f"no {KNOWN} in"):
        W.resolve_weights("obelisk", str(tmp_path), KNOWN)


def test_download_verifies_checksum_and_fails_offline_clearly(monkeypatch, tmp_path):
    source = tmp_path / "remote.pth"
    source.write_bytes(b"pretend weights")
    digest = hashlib.sha256(b"pretend weights").hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(cache))
    info = W.WeightsInfo("fake.pth", digest, "fakenet", source.as_uri())
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "fake.pth", info)
    path, got = W.resolve_weights("fakenet", None, "fake.pth")
    assert path == cache / "fake.pth" and got == digest and path.read_bytes() == b"pretend weights"
    # wrong bytes at the URL: refused, nothing left in the cache
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "fake2.pth", W.WeightsInfo("fake2.pth", "0" * 64, "fakenet", source.as_uri()))
    with pytest.raises(W.WeightsError, match="discarded"):
        W.resolve_weights("fakenet", None, "fake2.pth")
    assert sorted(p.name for p in cache.iterdir()) == ["fake.pth"]
    # unreachable URL (offline): the message says where to put the file by hand
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "fake3.pth",
                        W.WeightsInfo("fake3.pth", digest, "fakenet", (tmp_path / "absent.pth").as_uri()))
    with pytest.raises(W.WeightsError, match=r"could not download .*put it at .*fake3\.pth"):
        W.resolve_weights("fakenet", None, "fake3.pth")


class _Evil:
    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


def test_checkpoint_with_arbitrary_objects_is_never_unpickled(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(W.WeightsError, match="not a weights-only"):
        W.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "trunc.pth"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(W.WeightsError, match="not a weights-only"):
        W.load_checkpoint(path)


# ---------------------------------------------------------------------------------------- registry
def test_network_extractors_are_registered_lazily(tmp_path, monkeypatch, universal_file):
    assert {"obelisk", "pdd", "universal", "torchscript"} <= set(available_extractors())
    with pytest.raises(ConfigError, match="--weights"):
        make_extractor(RegistrationConfig(features="torchscript"))
    ex = make_extractor(RegistrationConfig(features="universal", weights=str(universal_file[0])))
    assert isinstance(ex, UniversalExtractor)
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path))
    (tmp_path / KNOWN).write_bytes(b"tampered")
    with pytest.raises(W.WeightsError, match="checksum mismatch"):
        make_extractor(RegistrationConfig(features="obelisk"))


# ---------------------------------------------------------------------------------------- OBELISK body box
def test_obelisk_runs_on_the_body_box_and_maps_back_to_the_image_grid(tmp_path, monkeypatch):
    """With a stand-in network that returns its input (HU / 1024 + 1), the extractor must give
    back the image's own HU inside the body: the network grid (LAI, network voxel size, body box
    padded to a multiple of 8) and the way back are placed right in physical space."""
    from voxelopt.networks import obelisk as O

    path = tmp_path / "obelisk.pth"
    torch.save(ObeliskHybridTCIA().state_dict(), path)
    monkeypatch.setenv(W.ENV_ALLOW_UNVERIFIED, "1")
    ex = O.ObeliskExtractor(str(path))
    size = (60, 50, 40)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in size[::-1]), indexing="ij")
    arr = np.full(size[::-1], -1000.0, dtype=np.float32)
    body = (slice(6, 24), slice(8, 30), slice(5, 33))
    arr[body] = (100.0 + 3.0 * i + 2.0 * j - 4.0 * k)[body]  # linear inside the body: exact under trilinear sampling
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetOrigin((10.0, -30.0, 100.0))
    volume, grid = ex.input_grid(image, CPU)
    assert all(n % 8 == 0 for n in grid.size) and tuple(volume.shape[2:]) == grid.size
    extent = np.asarray(grid.size) * grid.spacing
    assert np.all(extent < np.asarray(size) * (1.5, 2.0, 2.5))  # cut to the body, not the whole image
    assert np.allclose(grid.direction_matrix, np.diag([1.0, -1.0, -1.0]))  # LAI in LPS space

    def identity_network(x):
        ones = x[0].expand(9, *x.shape[2:]) * O.LOGIT_SCALE
        return {"logits": ones, "d144": ones, "d72": ones[:, ::2, ::2, ::2]}

    monkeypatch.setattr(ex, "run", lambda v: identity_network(v / 1024.0 + 1.0))
    f = ex.extract(image, CPU)
    assert f.shape == (9,) + arr.shape
    inner = (slice(8, 22), slice(10, 28), slice(8, 30))  # body voxels at least 2 (along x 3) voxels from its edge
    hu = (f[3].numpy() - 1.0) * 1024.0
    assert np.abs(hu[inner] - arr[inner]).max() < 0.05


def thin_ct(slices: int) -> sitk.Image:
    """A CT-like image of a few axial slices on its own short grid (2.5 mm slices)."""
    arr = np.full((slices, 50, 60), -1000.0, dtype=np.float32)
    arr[:, 10:40, 8:52] = 40.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.5, 2.0, 2.5))
    return image


@pytest.mark.parametrize("slices", [2, 3])
def test_network_extractors_run_on_a_slab_of_a_few_slices(tmp_path, monkeypatch, slices):
    """OBELISK needs at least 16 voxels per axis and PDD's output lattice 2 points: a thin slab
    (5-7.5 mm) is padded with air to that (it failed with a shape error and a singular matrix);
    the features come back on the image's own grid."""
    from voxelopt.networks import obelisk as O
    from voxelopt.networks.pdd import PDDExtractor

    monkeypatch.setenv(W.ENV_ALLOW_UNVERIFIED, "1")
    image = thin_ct(slices)
    obelisk_path = tmp_path / "obelisk.pth"
    torch.save(ObeliskHybridTCIA().state_dict(), obelisk_path)
    obelisk = O.ObeliskExtractor(str(obelisk_path))
    volume, grid = obelisk.input_grid(image, CPU)
    assert all(n % 8 == 0 and n >= 16 for n in grid.size) and tuple(volume.shape[2:]) == grid.size
    assert obelisk.extract(image, CPU).shape[1:] == (slices, 50, 60)
    pdd_path = tmp_path / "pdd.pth"
    net = PDDFeatureNet(96, 1, centred=True)
    torch.save(_random_state(net), pdd_path)
    features = PDDExtractor(str(pdd_path)).extract(image, CPU)
    assert features.shape == (24, slices, 50, 60) and bool(torch.isfinite(features).all())


def test_obelisk_in_array_order_gives_the_transposed_outputs():
    """The network for (k, j, i) tensors (kernels transposed, offsets reversed) computes what the
    published one computes on (i, j, k) tensors; sizes differ per axis so that a swapped axis,
    lattice or offset component shows."""
    from voxelopt.networks.obelisk import in_array_order

    net = ObeliskHybridTCIA()
    net.load_state_dict(_random_state(net, seed=5))
    net.eval()
    with torch.no_grad():  # offsets of a few voxels, as in the trained network
        net.offset1.copy_(torch.rand(net.offset1.shape, generator=torch.Generator().manual_seed(1)) * 0.2 - 0.1)
        net.offset2.copy_(torch.rand(net.offset2.shape, generator=torch.Generator().manual_seed(2)) * 0.2 - 0.1)
    x = torch.rand(1, 1, 16, 24, 32, generator=torch.Generator().manual_seed(4)) * 2.0
    with torch.inference_mode():
        reference, ref_feats = net(x, return_features=True)
        out, feats = in_array_order(net)(x.permute(0, 1, 4, 3, 2).contiguous(), return_features=True)
    assert reference.abs().max() > 0.1
    scale = float(reference.abs().max())
    assert torch.allclose(out.permute(0, 1, 4, 3, 2), reference, atol=1e-5 * scale)
    assert torch.allclose(feats["d72"].permute(0, 1, 4, 3, 2), ref_feats["d72"], atol=1e-5 * float(ref_feats["d72"].abs().max()))
    untransposed = net(x.permute(0, 1, 4, 3, 2).contiguous()).permute(0, 1, 4, 3, 2)  # what the test tells apart
    assert not torch.allclose(untransposed, reference, atol=1e-2 * scale)


def test_obelisk_convolution_of_a_thin_input_is_the_convolution():
    """The oneDNN call for inputs PyTorch would send to its slow kernel gives the same values."""
    from voxelopt.networks.layers import conv3d

    conv = nn.Conv3d(1, 4, 3, padding=1, stride=2).eval()
    x = torch.rand(1, 1, 8, 20, 12, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        assert torch.allclose(conv3d(x, conv.weight, conv.bias, conv.padding, conv.stride), conv(x), atol=1e-5)


def test_convolution_of_an_upsampled_input_without_upsampling():
    """conv(cat(up(low), skip)) by phase convolutions of low and exact faces equals the plain
    formulation (3 output channels so a phase or channel mix-up shows; a batch of 2)."""
    from voxelopt.networks.layers import conv_of_upsampled

    generator = torch.Generator().manual_seed(8)
    conv = nn.Conv3d(7, 3, 3, padding=1).eval()
    low, skip = torch.rand(2, 4, 3, 5, 4, generator=generator), torch.rand(2, 3, 6, 10, 8, generator=generator)
    up = torch.nn.functional.interpolate(low, size=skip.shape[2:], mode="trilinear", align_corners=False)
    with torch.inference_mode():
        expected = conv(torch.cat((up, skip), 1))
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            out = conv_of_upsampled(conv, low.contiguous(memory_format=layout), skip.contiguous(memory_format=layout))
            assert torch.allclose(out, expected, atol=1e-5)
        with pytest.raises(ValueError, match="twice"):
            conv_of_upsampled(conv, low, skip[:, :, :5])


def test_obelisk_box_mean_is_avg_pool():
    from voxelopt.networks.obelisk import _box_mean

    x = torch.rand(1, 1, 9, 10, 11, generator=torch.Generator().manual_seed(6))
    expected = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        assert torch.allclose(_box_mean(x.contiguous(memory_format=layout)), expected, atol=1e-6)


def test_obelisk_with_folded_batch_norms_gives_the_same_outputs():
    from voxelopt.networks.obelisk import fold_batch_norms

    net = ObeliskHybridTCIA()
    net.load_state_dict(_random_state(net, seed=3))
    net.eval()
    x = torch.rand(1, 1, 16, 24, 16) * 2.0
    with torch.inference_mode():
        reference, ref_feats = net(x, return_features=True)
        folded, feats = fold_batch_norms(net)(x, return_features=True)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fold_batch_norms(net).modules())
    assert reference.abs().max() > 0.1
    assert torch.allclose(folded, reference, atol=1e-4 * float(reference.abs().max()))
    assert torch.allclose(feats["d72"], ref_feats["d72"], atol=1e-4 * float(ref_feats["d72"].abs().max()))
