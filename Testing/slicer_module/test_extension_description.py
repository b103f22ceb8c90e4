"""The extension's description passes the Slicer Extensions Index checks.

What the index's checks and submission checklist ask: the extension (CMake project) name does not
start with "Slicer" (the repository may), a LICENSE file at the root, contributors as
"Name (Affiliation)", and homepage, icon and screenshot URLs that are real files. Here every URL
must point into this repository (github.com/SlicerVoxelOpt/SlicerVoxelOpt, main branch) at a path
that exists; the module's help text links there too, and the VoxelOpt paper is cited.
"""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPOSITORY_URLS = (
    "https://github.com/SlicerVoxelOpt/SlicerVoxelOpt/blob/main/",
    "https://raw.githubusercontent.com/SlicerVoxelOpt/SlicerVoxelOpt/main/",
)


def cmake_text():
    return open(os.path.join(REPO, "CMakeLists.txt"), encoding="utf-8").read()


def metadata():
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', cmake_text()))


def repository_path(url: str) -> str:
    """The file a URL of this repository names; fails for any other URL."""
    for prefix in REPOSITORY_URLS:
        if url.startswith(prefix):
            return url[len(prefix):].split("#")[0]
    raise AssertionError(f"{url} does not point into github.com/SlicerVoxelOpt/SlicerVoxelOpt (main)")


def test_extension_name_does_not_start_with_slicer():
    name = re.search(r"^project\((\w+)\)", cmake_text(), re.M).group(1)
    assert name == "VoxelOpt" and not name.lower().startswith("slicer")


def test_license_file_is_apache_2():
    text = open(os.path.join(REPO, "LICENSE"), encoding="utf-8").read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000  # the full text, not a stub
    pyproject = open(os.path.join(REPO, "VoxelOptLib", "pyproject.toml"), encoding="utf-8").read()
    assert "Apache-2.0" in pyproject  # the engine's declared licence is the same


def test_contributors_are_name_and_affiliation():
    contributors = [c.strip() for c in metadata()["EXTENSION_CONTRIBUTORS"].split(",")]
    assert contributors and all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in contributors), contributors
    module = open(os.path.join(REPO, "VoxelOptSlicer", "VoxelOptRegistration.py"), encoding="utf-8").read()
    listed = re.search(r"self\.parent\.contributors = \[(.*)\]", module).group(1)
    assert all(re.fullmatch(r'"[^()"]+ \([^()"]+\)"', c.strip()) for c in listed.split(",")), listed


def test_every_url_points_to_a_file_of_this_repository():
    meta = metadata()
    urls = [meta["EXTENSION_HOMEPAGE"], meta["EXTENSION_ICONURL"]] + meta["EXTENSION_SCREENSHOTURLS"].split()
    module = open(os.path.join(REPO, "VoxelOptSlicer", "VoxelOptRegistration.py"), encoding="utf-8").read()
    urls += re.findall(r'"(https://[^"]+)"', module)
    assert len(urls) >= 5
    for url in urls:
        path = repository_path(url)
        assert os.path.isfile(os.path.join(REPO, path)), f"{url}: no file {path} in the repository"
    assert meta["EXTENSION_ICONURL"].endswith(".png") and all(u.endswith(".png") for u in meta["EXTENSION_SCREENSHOTURLS"].split())


def test_the_paper_is_cited():
    module = open(os.path.join(REPO, "VoxelOptSlicer", "VoxelOptRegistration.py"), encoding="utf-8").read()
    for text in (metadata()["EXTENSION_DESCRIPTION"], module):
        assert "Zhang" in text and "VoxelOpt" in text and "MICCAI 2025" in text
