"""The resolver against ComfyUI-Manager 4.3's real node database: real-shaped
workflows in both formats, a snapshot, registry ids and a PNG built here."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from controller.core.sources import nodedb, png, snapshot, workflow
from controller.core.sources.errors import SourceError
from controller.core.sources.merge import Sources, build, sources_from_bytes
from controller.core.sources.nodedb import NodeDB
from controller.core.sources.resolver import Selection

KJ = "https://github.com/kijai/ComfyUI-KJNodes"
IPADAPTER = "https://github.com/cubiq/ComfyUI_IPAdapter_plus"
EASY_USE = "https://github.com/yolain/ComfyUI-Easy-Use"
RES4LYF = "https://github.com/ClownsharkBatwing/RES4LYF"
BILLBUM = "https://github.com/AhBumm/ComfyUI_BillBum_APIset_Nodes"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def ui_node(node_id: int, class_type: str, **props: Any) -> dict[str, Any]:
    """One node as the ComfyUI frontend saves it."""
    return {
        "id": node_id,
        "type": class_type,
        "pos": [100 * node_id, 100],
        "size": [315, 262],
        "flags": {},
        "order": node_id,
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "properties": {"Node name for S&R": class_type, **props},
        "widgets_values": [],
    }


def ui_workflow() -> dict[str, Any]:
    return {
        "id": "5b1f2c61-8c2e-4d0c-9d0e-2f1a3f0b9d11",
        "revision": 0,
        "last_node_id": 11,
        "last_link_id": 0,
        "nodes": [
            ui_node(1, "CheckpointLoaderSimple", cnr_id="comfy-core", ver="0.3.41"),
            ui_node(2, "KSampler", cnr_id="comfy-core", ver="0.3.41"),
            ui_node(3, "Note"),
            ui_node(4, "PrimitiveNode"),  # frontend-only, though a pack also lists it
            ui_node(5, "ImageResizeKJ", cnr_id="comfyui-kjnodes", ver="1.1.0"),
            ui_node(6, "SetNode", cnr_id="comfyui-kjnodes", ver="1.1.0"),  # JS-only class
            ui_node(7, "IPAdapterAdvanced", aux_id="cubiq/ComfyUI_IPAdapter_plus", ver=COMMIT),
            ui_node(8, "easy seed"),
            ui_node(9, "Sleep"),  # KJNodes and another pack: KJNodes is already needed
            ui_node(10, "Film Grain"),  # two listed packs: the more starred one
            ui_node(11, "Gpt Image (BillBum)"),  # only the pack's nodename_pattern knows it
            ui_node(12, "TotallyUnknownNode9000"),
        ],
        "links": [],
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}, "frontendVersion": "1.23.4"},
        "version": 0.4,
    }


def api_workflow() -> dict[str, Any]:
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {"seed": 1, "steps": 20, "cfg": 7, "model": ["4", 0]},
            "_meta": {"title": "KSampler"},
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "5": {"class_type": "ImageResizeKJ", "inputs": {"width": 512, "image": ["8", 0]}},
        "6": {"class_type": "easy seed", "inputs": {"seed": 3}},
        "7": {"class_type": "TotallyUnknownNode9000", "inputs": {}},
    }


@pytest.fixture(scope="module")
def db(node_db_dir: Path) -> NodeDB:
    return nodedb.load_dir(node_db_dir)


def resolve(db: NodeDB, **sources: Any) -> Selection:
    return build(Sources(**sources), lambda: db)


def by_url(selection: Selection) -> dict[str, dict[str, Any]]:
    return {node["url"]: node for node in selection.to_dict()["nodes"]}


def test_the_real_database_loads_with_its_known_shape(db: NodeDB) -> None:
    assert "KSampler" in db.core
    assert db.by_class["ImageResizeKJ"] == [KJ]
    several = sum(1 for urls in db.by_class.values() if len(urls) > 1)
    assert several > 500  # ComfyUI-Manager 4.3: 861 classes with several providers
    assert db.stars and db.listed and db.patterns


def test_ui_workflow_resolves_in_the_documented_order(db: NodeDB) -> None:
    selection = resolve(db, workflow=ui_workflow())
    nodes = by_url(selection)
    assert list(nodes) == [KJ, IPADAPTER, EASY_USE, RES4LYF, BILLBUM]
    assert nodes[KJ]["rule"] == "cnr_id"
    assert nodes[KJ]["classes"] == ["ImageResizeKJ", "SetNode", "Sleep"]
    assert nodes[KJ]["ref"] is None  # a version, tags not looked up offline
    assert any("1.1.0" in w and "default branch" in w for w in selection.warnings)
    assert nodes[IPADAPTER] == {
        "name": "ComfyUI_IPAdapter_plus",
        "url": IPADAPTER,
        "ref": COMMIT,
        "classes": ["IPAdapterAdvanced"],
        "rule": "aux_id",
    }
    assert nodes[EASY_USE]["rule"] == "only provider"
    assert nodes[BILLBUM]["rule"] == "nodename_pattern"
    assert selection.unresolved == ["TotallyUnknownNode9000"]
    ambiguous = {entry["class"]: entry for entry in selection.ambiguous}
    assert set(ambiguous) == {"Sleep", "Film Grain"}
    assert ambiguous["Sleep"]["chosen"] == KJ
    assert ambiguous["Sleep"]["reason"].startswith("already needed")
    assert ambiguous["Film Grain"]["chosen"] == RES4LYF
    assert len(ambiguous["Film Grain"]["candidates"]) == 2
    # Nothing for core or frontend-only classes, even the one a pack also lists.
    classes = [c for node in nodes.values() for c in node["classes"]]
    assert not {"KSampler", "Note", "PrimitiveNode", "CheckpointLoaderSimple"} & set(classes)


def test_resolution_is_deterministic(db: NodeDB) -> None:
    first = resolve(db, workflow=ui_workflow()).to_dict()
    assert resolve(db, workflow=json.loads(json.dumps(ui_workflow()))).to_dict() == first


def test_api_workflow_format(db: NodeDB) -> None:
    selection = resolve(db, workflow=api_workflow())
    nodes = by_url(selection)
    assert list(nodes) == [KJ, EASY_USE]
    assert nodes[KJ]["rule"] == "only provider"
    assert selection.unresolved == ["TotallyUnknownNode9000"]
    # Also wrapped the way /prompt takes it.
    assert by_url(resolve(db, workflow={"prompt": api_workflow()})).keys() == nodes.keys()


def test_subgraph_classes_are_collected() -> None:
    graph = {
        "nodes": [ui_node(1, "a1b2c3d4-0000-4000-8000-000000000000")],
        "definitions": {
            "subgraphs": [
                {"id": "a1b2c3d4-0000-4000-8000-000000000000", "nodes": [ui_node(2, "easy seed")]}
            ]
        },
    }
    assert [use.class_type for use in workflow.node_uses(graph)] == ["easy seed"]


def test_explicit_nodes_win_and_duplicates_merge(db: NodeDB) -> None:
    selection = resolve(
        db,
        nodes=[f"{KJ}.git@main", "comfyui-easy-use"],
        workflow=ui_workflow(),
    )
    nodes = by_url(selection)
    assert nodes[KJ + ".git"]["ref"] == "main"
    assert nodes[KJ + ".git"]["rule"] == "explicit"
    assert "ImageResizeKJ" in nodes[KJ + ".git"]["classes"]
    assert KJ not in nodes  # one entry per repository
    assert nodes[EASY_USE]["rule"] == "registry id"
    assert nodes[EASY_USE]["classes"] == ["easy seed"]


def test_registry_ids_with_versions(db: NodeDB) -> None:
    selection = resolve(db, nodes=["comfyui-kjnodes@1.1.0", "ComfyUI_IPAdapter_plus"])
    assert [n["url"] for n in selection.to_dict()["nodes"]] == [KJ, IPADAPTER]
    with pytest.raises(SourceError, match=r"nodes\.0.*not in the node database"):
        resolve(db, nodes=["no-such-pack-anywhere"])
    with pytest.raises(SourceError, match=r"nodes\.0"):
        resolve(db, nodes=["bad id!"])


def test_snapshot_json_and_yaml(db: NodeDB) -> None:
    snap = {
        "comfyui": "b779349b55e79aff81a98b752f5cb486c71812db",
        "git_custom_nodes": {
            "https://github.com/ltdrdata/ComfyUI-Manager": {"hash": COMMIT, "disabled": False},
            "https://github.com/rgthree/rgthree-comfy": {"hash": COMMIT, "disabled": True},
        },
        "cnr_custom_nodes": {"comfyui-kjnodes": "1.1.0", "no-such-pack-anywhere": "1.0.0"},
        "file_custom_nodes": [{"filename": "my_node.py", "disabled": False}],
        "pips": {"numpy==1.26.4": ""},
    }
    import yaml

    for form in (snap, json.dumps(snap), yaml.safe_dump(snap)):
        selection = resolve(db, snapshot=form)
        nodes = by_url(selection)
        assert list(nodes) == ["https://github.com/ltdrdata/ComfyUI-Manager", KJ]
        assert nodes["https://github.com/ltdrdata/ComfyUI-Manager"]["ref"] == COMMIT
        assert selection.unresolved == ["no-such-pack-anywhere"]
        assert any("disabled" in w for w in selection.warnings)
        assert any("file_custom_nodes" in w for w in selection.warnings)


def png_with_text(chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00")
    return (
        png.SIGNATURE
        + chunk(b"IHDR", header)
        + b"".join(chunk(kind, body) for kind, body in chunks)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def test_png_with_an_embedded_workflow(db: NodeDB) -> None:
    ui_text = json.dumps(ui_workflow()).encode()
    api_text = json.dumps(api_workflow()).encode()
    plain = png_with_text([(b"tEXt", b"prompt\0" + api_text), (b"tEXt", b"workflow\0" + ui_text)])
    compressed = png_with_text([(b"zTXt", b"workflow\0\0" + zlib.compress(ui_text))])
    international = png_with_text([(b"iTXt", b"workflow\0\x01\0\0\0" + zlib.compress(ui_text))])
    expected = resolve(db, workflow=ui_workflow()).to_dict()
    for data in (plain, compressed, international):
        loaded = workflow.load_bytes(data)
        assert resolve(db, workflow=loaded).to_dict() == expected
    only_prompt = png_with_text([(b"tEXt", b"prompt\0" + api_text)])
    assert by_url(resolve(db, workflow=workflow.load_bytes(only_prompt))).keys() == {KJ, EASY_USE}
    with pytest.raises(SourceError, match="no ComfyUI workflow"):
        workflow.load_bytes(png_with_text([]))
    bomb = png_with_text([(b"zTXt", b"workflow\0\0" + zlib.compress(b" " * (20 << 20)))])
    with pytest.raises(SourceError, match="inflates past"):
        workflow.load_bytes(bomb)


def test_default_nodes_file_forms() -> None:
    lines = b"# nodes\nhttps://x.org/a/b@v1 # pinned\n\nkjnodes\n"
    assert sources_from_bytes(lines, "f").nodes == ["https://x.org/a/b@v1", "kjnodes"]
    assert sources_from_bytes(json.dumps(ui_workflow()).encode(), "f").workflow is not None
    yaml_snapshot = b"git_custom_nodes:\n  https://x.org/a/b: {hash: null}\n"
    assert sources_from_bytes(yaml_snapshot, "f").snapshot


def test_bad_workflows_are_refused_with_the_field() -> None:
    with pytest.raises(SourceError, match="neither a UI-format"):
        workflow.node_uses({"hello": 1})
    with pytest.raises(SourceError, match=r"workflow\.nodes\.0\.type"):
        workflow.node_uses({"nodes": [{"type": 5}]})
    with pytest.raises(SourceError, match="more than"):
        workflow.node_uses({"nodes": [{"type": f"N{i}"} for i in range(workflow.MAX_NODES + 1)]})
    with pytest.raises(SourceError, match="is not valid JSON"):
        workflow.load_bytes(b"{nope")
    with pytest.raises(SourceError, match="names no custom nodes"):
        snapshot.parse({"comfyui": "abc"})


def test_resolved_urls_pass_the_protocol_validators(db: NodeDB) -> None:
    # A workflow's aux_id is untrusted: one that is not owner/repo is never used as a URL.
    hostile = {"nodes": [ui_node(1, "easy seed", aux_id="x/y; rm -rf ~", ver="--upload-pack=sh")]}
    selection = resolve(db, workflow=hostile)
    assert [n["url"] for n in selection.to_dict()["nodes"]] == [EASY_USE]
