"""Network weights in the Slicer module: never downloaded unless allowed, kept in one folder.

The logic is tested headless on real slicer-core; every way out to the network is replaced by a
function that fails the test, so "no download" is checked, not assumed.
"""

import os
import shutil
import types
import urllib.request

import pytest

import slicer
from slicer_test_helpers import requires_engine
from VoxelOptRegistrationLib import RegistrationLogic, WeightsDownloadRequired, network_weights, phantom_nodes

pytestmark = requires_engine

SHARED_OBELISK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "models", "obelisk",
                              "obeliskhybrid_tcia_fold1.pth")


def fast_config(**changes):
    import voxelopt

    return voxelopt.RegistrationConfig.preset("fast", **{"levels": 2, "feature_spacing": 5.0, "device": "cpu", **changes})


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL or download weights fails the test."""
    import voxelopt.networks.weights as engine_weights

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(engine_weights, "download", refuse)


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_missing_weights_give_a_clear_error_and_no_download(scene, tmp_path, no_network):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(24, 20, 16))
    logic = RegistrationLogic(scene)
    folder = tmp_path / "weights"
    logic.weightsDirectory = str(folder)
    before = node_ids(scene)
    for features in ("obelisk", "mind+pdd"):
        with pytest.raises(WeightsDownloadRequired, match=f"not found in {folder}") as raised:
            logic.process(nodes["fixed"], nodes["moving"], fast_config(features=features))
        assert raised.value.directory == str(folder)
        expected = {"obelisk": ["obeliskhybrid_tcia_fold1.pth"], "mind+pdd": ["dense_reg_mind2_feat_epoch2999.pth"]}[features]
        assert raised.value.files == expected
        assert all(url.startswith("https://") and url.endswith(name) for url, name in zip(raised.value.urls, expected))
    assert not folder.exists()  # nothing written
    assert node_ids(scene) == before
    # MIND features need no weights: no check, no error, and the engine's config keeps weights=None.
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(features="mind"))
    assert request.engineInputs.config.weights is None and request.engineInputs.weight_downloads == ()


def test_weights_in_the_folder_are_used_without_download(scene, tmp_path, no_network):
    if not os.path.isfile(SHARED_OBELISK):
        pytest.skip("../shared/models/obelisk is not available")
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(24, 20, 16))
    logic = RegistrationLogic(scene)
    logic.weightsDirectory = str(tmp_path)
    shutil.copy(SHARED_OBELISK, tmp_path)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(features="mind+obelisk"))
    assert request.engineInputs.config.weights == str(tmp_path)
    assert request.engineInputs.weight_downloads == ()


def test_an_allowed_download_goes_into_the_folder_before_the_engine_runs(scene, tmp_path, monkeypatch):
    """With permission, compute() downloads the published file (URL and checksum from the engine)
    into the weights folder; the download itself is replaced by a copy of the shared file."""
    if not os.path.isfile(SHARED_OBELISK):
        pytest.skip("../shared/models/obelisk is not available")
    import voxelopt.networks.weights as engine_weights

    calls = []

    def fake_download(url, target, expected_sha256):
        calls.append((url, str(target)))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED_OBELISK, target)
        assert engine_weights.sha256_of(target) == expected_sha256
        return target

    monkeypatch.setattr(engine_weights, "download", fake_download)
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(24, 20, 16))
    logic = RegistrationLogic(scene)
    folder = tmp_path / "weights"
    logic.weightsDirectory = str(folder)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(features="obelisk"), allowWeightsDownload=True)
    assert not folder.exists() and calls == []  # prepare (main thread) downloads nothing
    messages = []
    computed = logic.compute(request.engineInputs, progress=lambda fraction, message: messages.append(message))
    assert calls == [(engine_weights.KNOWN_WEIGHTS["obeliskhybrid_tcia_fold1.pth"].url, str(folder / "obeliskhybrid_tcia_fold1.pth"))]
    assert messages[0] == "Downloading network weights obeliskhybrid_tcia_fold1.pth"
    assert computed.result.config.weights == str(folder)


def test_the_folder_is_in_slicers_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(cachePath=str(tmp_path)), raising=False)
    assert network_weights.default_directory() == os.path.join(str(tmp_path), "VoxelOpt")
    monkeypatch.delattr(slicer, "app")
    from voxelopt.networks.weights import cache_dir

    assert network_weights.default_directory() == str(cache_dir())  # headless slicer-core: the engine's folder


def test_engine_weights_helpers(tmp_path, no_network):
    """voxelopt.networks.weights.default_weights / weights_available, which the bridge relies on."""
    from voxelopt.networks.weights import KNOWN_WEIGHTS, default_weights, weights_available

    assert default_weights("obelisk") is KNOWN_WEIGHTS["obeliskhybrid_tcia_fold1.pth"]
    assert default_weights("pdd") is KNOWN_WEIGHTS["dense_reg_mind2_feat_epoch2999.pth"]
    assert default_weights("universal") is None and default_weights("mind") is None
    assert not weights_available("obelisk", str(tmp_path))  # empty folder: missing, and not downloaded
    assert not weights_available("universal", str(tmp_path))  # needs a file
    (tmp_path / "obeliskhybrid_tcia_fold1.pth").write_bytes(b"not the checkpoint")
    assert not weights_available("obelisk", str(tmp_path))  # present but fails its checksum
    if os.path.isfile(SHARED_OBELISK):
        shutil.copy(SHARED_OBELISK, tmp_path)
        assert weights_available("obelisk", str(tmp_path)) and weights_available("obelisk", SHARED_OBELISK)
    assert list(tmp_path.iterdir()) == [tmp_path / "obeliskhybrid_tcia_fold1.pth"]
