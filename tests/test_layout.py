"""blobserve.oci.layout.LayoutSource over OCI layouts on disk, and the bundled demo.

Layouts are written by ``imagebuilder.build_layout``; images are resolved through
``LayoutSource`` and unpacked with ``unpack_image`` from ``Sources`` configured with
the layout for one repository, as the service does.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

import blobserve.demo
import imagebuilder as ib
from blobserve.errors import InvalidContent, NotFound
from blobserve.oci.layout import LayoutSource
from blobserve.oci.reference import parse_reference
from blobserve.oci.registry import ClientOptions
from blobserve.oci.sources import Sources, SourceSpec, unpack_image
from blobserve.oci.types import OCI_MANIFEST, Limits, ResolvedImage

NAME = "layouts.test/team/site"
DEMO_NAME = "demo.local/blobserve/demo"
DEMO_DIR = Path(blobserve.demo.__file__).parent


def site(marker: str) -> dict[str, str | bytes]:
    """A small website marked so that two images never hold the same bytes."""
    return {
        "www/index.html": f"<p>{marker}</p>\n",
        "www/css/site.css": f"/* {marker} */ body {{ margin: 0 }}\n",
        "www/logo.bin": bytes(range(256)) * 8 + marker.encode(),
    }


def as_bytes(spec: dict[str, str | bytes]) -> dict[str, bytes]:
    """The file contents a spec of plain files unpacks to."""
    return {k: v.encode() if isinstance(v, str) else v for k, v in spec.items()}


def files_in(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path, with its bytes."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def sources_for(root: Path, platform: str = "linux/amd64", name: str = NAME) -> Sources:
    """Sources serving the repository ``name`` from the layout at root."""
    spec = SourceSpec(
        options=ClientOptions(platform=platform), layouts=((name, str(root)),)
    )
    return Sources(spec)


def pull(sources: Sources, reference: str, dest: Path) -> ResolvedImage:
    """Resolve a reference through its source and unpack it into dest."""
    ref = parse_reference(reference)
    image = sources.for_ref(ref).resolve(ref)

    dest.mkdir(parents=True)
    unpack_image(sources, ref, image, str(dest), Limits())
    return image


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, dict[str, ib.Built], dict[str, dict]]:
    """A layout with two single images (v1, v2) and a two-platform index (multi)."""
    specs = {
        "v1": site("v1-" + uuid.uuid4().hex),
        "v2": site("v2-" + uuid.uuid4().hex),
        "amd64": site("amd64-" + uuid.uuid4().hex),
        "arm64": site("arm64-" + uuid.uuid4().hex),
    }
    images: dict[str, ib.ImageSpec | ib.IndexSpec] = {
        "v1": ib.simple_image(specs["v1"]),
        "v2": ib.simple_image(specs["v2"], "zstd"),
        "multi": ib.two_platform_index(specs["amd64"], specs["arm64"]),
    }
    root = tmp_path / "layout"
    built = ib.build_layout(root, images)
    return root, built, specs


def set_ref_names(root: Path, rename: dict[str, str]) -> None:
    """Rewrite ref.name annotations of the layout's index.json (old to new)."""
    index_path = root / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["manifests"]:
        annotations = entry["annotations"]
        old = annotations[ib.REF_NAME]
        annotations[ib.REF_NAME] = rename.get(old, old)
    index_path.write_text(json.dumps(index))


# --- finding images -------------------------------------------------------------------


def test_tag_is_found_through_the_ref_name_annotation(
    layout: tuple, tmp_path: Path
) -> None:
    root, built, specs = layout
    sources = sources_for(root)

    first = pull(sources, f"{NAME}:v1", tmp_path / "v1")
    second = pull(sources, f"{NAME}:v2", tmp_path / "v2")

    assert sources.is_layout(parse_reference(f"{NAME}:v1"))
    assert first.manifest_digest == built["v1"].digest
    assert second.manifest_digest == built["v2"].digest
    assert first.media_type == OCI_MANIFEST
    assert files_in(tmp_path / "v1") == as_bytes(specs["v1"])
    assert files_in(tmp_path / "v2") == as_bytes(specs["v2"])


def test_full_reference_annotation_names_the_tag_too(layout: tuple) -> None:
    root, built, _ = layout
    set_ref_names(root, {"v1": f"{NAME}:stable", "v2": "other.test/team/site:v2"})
    source = LayoutSource(str(root))

    image = source.resolve(parse_reference(f"{NAME}:stable"))

    assert image.manifest_digest == built["v1"].digest
    with pytest.raises(NotFound, match="'v2'"):
        source.resolve(parse_reference(f"{NAME}:v2"))


def test_digest_lookup(layout: tuple, tmp_path: Path) -> None:
    root, built, specs = layout
    arm64 = built["multi"].images["linux/arm64/v8"]
    sources = sources_for(root)

    listed = pull(sources, f"{NAME}@{built['v2'].digest}", tmp_path / "v2")
    nested = pull(sources, f"{NAME}@{arm64.digest}", tmp_path / "arm64")

    assert listed.manifest_digest == built["v2"].digest
    assert nested.manifest_digest == arm64.digest
    assert files_in(tmp_path / "v2") == as_bytes(specs["v2"])
    assert files_in(tmp_path / "arm64") == as_bytes(specs["arm64"])


def test_digest_beside_a_tag_wins(layout: tuple) -> None:
    root, built, _ = layout
    reference = f"{NAME}:v1@{built['v2'].digest}"

    image = LayoutSource(str(root)).resolve(parse_reference(reference))

    assert image.manifest_digest == built["v2"].digest


def test_index_platform_selection(layout: tuple, tmp_path: Path) -> None:
    root, built, specs = layout
    images = built["multi"].images

    default = pull(sources_for(root), f"{NAME}:multi", tmp_path / "amd64")
    arm = pull(sources_for(root, "linux/arm64"), f"{NAME}:multi", tmp_path / "arm64")

    assert default.manifest_digest == images["linux/amd64"].digest
    assert arm.manifest_digest == images["linux/arm64/v8"].digest
    assert files_in(tmp_path / "amd64") == as_bytes(specs["amd64"])
    assert files_in(tmp_path / "arm64") == as_bytes(specs["arm64"])


def test_platform_not_in_the_index_is_not_found(layout: tuple) -> None:
    root, built, _ = layout
    source = LayoutSource(str(root), "linux/riscv64")

    with pytest.raises(NotFound, match="linux/riscv64") as caught:
        source.resolve(parse_reference(f"{NAME}:multi"))

    assert caught.value.digest == built["multi"].digest


# --- what is not there ----------------------------------------------------------------


def test_missing_tag_is_not_found(layout: tuple) -> None:
    root, _, _ = layout

    with pytest.raises(NotFound, match="'v9'") as caught:
        LayoutSource(str(root)).resolve(parse_reference(f"{NAME}:v9"))

    assert str(root) in str(caught.value)


def test_missing_digest_is_not_found(layout: tuple) -> None:
    root, _, _ = layout
    digest = "sha256:" + "0" * 64

    with pytest.raises(NotFound, match=digest):
        LayoutSource(str(root)).resolve(parse_reference(f"{NAME}@{digest}"))


def test_layout_without_index_is_not_found(tmp_path: Path) -> None:
    source = LayoutSource(str(tmp_path))

    with pytest.raises(NotFound, match="index.json"):
        source.resolve(parse_reference(f"{NAME}:v1"))
    with pytest.raises(NotFound):
        source.ping(NAME)


def test_index_that_is_not_json_is_invalid(layout: tuple) -> None:
    root, _, _ = layout
    (root / "index.json").write_text("{not json")

    with pytest.raises(InvalidContent, match="index.json"):
        LayoutSource(str(root)).resolve(parse_reference(f"{NAME}:v1"))


def test_deleted_layer_blob_is_not_found(layout: tuple, tmp_path: Path) -> None:
    root, built, _ = layout
    layer = built["v1"].layers[0]
    (root / "blobs" / "sha256" / layer.removeprefix("sha256:")).unlink()

    with pytest.raises(NotFound, match=layer):
        pull(sources_for(root), f"{NAME}:v1", tmp_path / "fs")


# --- content that does not match its digest -------------------------------------------


def test_tampered_layer_is_invalid_content(layout: tuple, tmp_path: Path) -> None:
    root, built, _ = layout
    layer = built["v1"].layers[0]
    path = root / "blobs" / "sha256" / layer.removeprefix("sha256:")
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))

    with pytest.raises(InvalidContent) as caught:
        pull(sources_for(root), f"{NAME}:v1", tmp_path / "fs")

    assert caught.value.digest == layer


def test_tampered_manifest_is_invalid_content(layout: tuple) -> None:
    root, built, _ = layout
    digest = built["v1"].digest
    path = root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    manifest = json.loads(path.read_text())
    manifest["annotations"] = {"swapped": "yes"}
    path.write_text(json.dumps(manifest))

    with pytest.raises(InvalidContent, match="refusing it") as caught:
        LayoutSource(str(root)).resolve(parse_reference(f"{NAME}:v1"))

    assert caught.value.digest == digest


# --- the bundled demo -----------------------------------------------------------------


def test_demo_layout_unpacks_the_demo_site(tmp_path: Path) -> None:
    sources = sources_for(DEMO_DIR / "layout", name=DEMO_NAME)
    site_dir = DEMO_DIR / "site"

    image = pull(sources, f"{DEMO_NAME}:latest", tmp_path / "fs")
    unpacked = files_in(tmp_path / "fs")

    assert sorted(unpacked) == [
        "www/app.js", "www/index.html", "www/logo.svg", "www/style.css",
    ]
    assert unpacked == files_in(site_dir)
    assert len(image.layers) == 1
    assert image.manifest_digest.startswith("sha256:")

