"""oreal.export without a server: config XML, tasks JSON, RLE and PNG against slow references, answer errors."""
import base64
import json
import struct
import xml.etree.ElementTree as ET
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oreal import Selection
from oreal.export import AnswerError, brush_rle, coco_rle, data_uri, labeling_config, png_bytes, read_answers, tasks

NAMES = ["sky", 'road & "kerb"', "<car>", "it's"]


def sel(pairs):
    img = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    sp = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return Selection(img, sp, torch.full_like(img, -1), torch.zeros(len(pairs)))


# ---------------------------------------------------------------------------------------------- references
def ref_png_decode(png):
    """Plain PNG reader for the files png_bytes writes (8-bit grey / RGB, filter 0)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks.setdefault(kind, b"")
        chunks[kind] += data
        pos += 12 + length
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    ch = {0: 1, 2: 3}[color]
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = []
    for y in range(h):
        line = raw[y * (w * ch + 1):(y + 1) * (w * ch + 1)]
        assert line[0] == 0
        rows.append([[line[1 + x * ch + k] for k in range(ch)] for x in range(w)])
    return rows  # [H][W][ch]


def ref_brush_decode(rle):
    """Label Studio's rle-pack decoder, bit by bit: RGBA bytes -> alpha mask as a nested list, flat."""
    bits = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def read(n):
        nonlocal pos
        v = int(bits[pos:pos + n], 2)
        pos += n
        return v

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = []
    while len(out) < num:
        rep = read(1)
        j = 1 + read(sizes[read(2)])
        if rep:
            out += [read(word)] * j
        else:
            out += [read(word) for _ in range(j)]
    assert len(out) == num
    return out


def ref_coco_counts(mask):
    h, w = mask.shape
    flat = [bool(mask[y, x]) for x in range(w) for y in range(h)]  # column-major
    counts, cur, run = [], False, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def ref_coco_string_decode(s):
    """maskApi.c rleFrString, transcribed as a loop."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


masks_2d = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1), st.floats(0, 1)).map(
    lambda t: torch.rand(t[0], t[1], generator=torch.Generator().manual_seed(t[2])) < t[3])


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("weak", [False, True])
@pytest.mark.parametrize("per", ["superpixel", "image"])
def test_labeling_config_parses_and_lists_classes(weak, per):
    root = ET.fromstring(labeling_config(NAMES, weak=weak, per=per, void="none of these"))
    (choices,) = root.iter("Choices")
    assert [c.get("value") for c in choices.iter("Choice")] == NAMES + ["none of these"]
    assert choices.get("choice") == ("multiple" if weak else "single-radio")
    assert choices.get("perRegion") == ("true" if per == "image" else None)
    assert choices.get("name") == "class" and choices.get("toName") == "image"
    (brush,) = root.iter("BrushLabels")
    assert brush.get("name") == "region" and [x.get("value") for x in brush.iter("Label")] == ["region"]
    assert root.find("Image").get("value") == "$image"


@pytest.mark.parametrize("names, void, msg", [
    ([], None, "at least one"),
    (["a", "a"], None, "distinct"),
    (["a", ""], None, "non-empty"),
    (["a", " b"], None, "leading or trailing"),
    (["a", 3], None, "non-empty string"),
    (["a"], "a", "differ"),
    ("abc", None, "sequence of strings"),
])
def test_labeling_config_rejects_bad_names(names, void, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        labeling_config(names, void=void)


def test_labeling_config_rejects_bad_per():
    with pytest.raises(ValueError, match="`per`"):
        labeling_config(["a"], per="pixel")


# ---------------------------------------------------------------------------------------------- masks
@settings(max_examples=60, deadline=None)
@given(masks_2d)
def test_coco_rle_matches_loop_reference(mask):
    got = coco_rle(mask, compressed=False)
    assert got == {"size": list(mask.shape), "counts": ref_coco_counts(mask)}
    s = coco_rle(mask)["counts"]
    assert all(48 <= ord(ch) < 48 + 64 for ch in s)
    assert ref_coco_string_decode(s) == got["counts"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy 2 copy= warning
@settings(max_examples=60, deadline=None)
@given(masks_2d)
def test_coco_rle_matches_pycocotools(mask):
    cocomask = pytest.importorskip("pycocotools.mask")
    import numpy as np

    ref = cocomask.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    assert coco_rle(mask) == {"size": [int(x) for x in ref["size"]], "counts": ref["counts"].decode()}
    assert (cocomask.decode({"size": ref["size"], "counts": coco_rle(mask)["counts"].encode()}) == mask.numpy()).all()


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0)])
def test_coco_rle_of_a_mask_without_pixels(shape):
    """maskApi.c's rleEncode writes its open run of zeros, of length 0: counts [0], the string "0"."""
    mask = torch.zeros(shape, dtype=torch.bool)
    assert coco_rle(mask, compressed=False) == {"size": list(shape), "counts": [0]}
    assert coco_rle(mask) == {"size": list(shape), "counts": "0"}


def test_coco_rle_long_runs_and_first_pixel_set():
    mask = torch.zeros(300, 200, dtype=torch.bool)
    mask[:, 150:] = True
    mask[0, 0] = True
    counts = coco_rle(mask, compressed=False)["counts"]
    assert counts[0] == 0 and counts == ref_coco_counts(mask)
    assert ref_coco_string_decode(coco_rle(mask)["counts"]) == counts


@settings(max_examples=60, deadline=None)
@given(masks_2d)
def test_brush_rle_decodes_to_the_mask(mask):
    flat = ref_brush_decode(brush_rle(mask))
    h, w = mask.shape
    assert flat == [255 if mask[y, x] else 0 for y in range(h) for x in range(w) for _ in range(4)]


def test_brush_rle_runs_over_2_16_bytes():
    mask = torch.zeros(200, 200, dtype=torch.bool)  # 160000 equal bytes: split into 3 runs
    mask[199, 199] = True
    flat = ref_brush_decode(brush_rle(mask))
    assert flat[:-4] == [0] * (4 * 40000 - 4) and flat[-4:] == [255] * 4


@settings(max_examples=30, deadline=None)
@given(masks_2d, st.booleans())
def test_png_bytes_round_trip(mask, rgb):
    g = torch.Generator().manual_seed(mask.numel())
    if rgb:
        img = torch.randint(0, 256, (3, *mask.shape), generator=g, dtype=torch.uint8)
        want = img.permute(1, 2, 0).tolist()
    else:
        img = mask
        want = [[[255 if v else 0] for v in row] for row in mask.tolist()]
    assert ref_png_decode(png_bytes(img)) == want


def test_png_bytes_readable_by_opencv():
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    img = torch.randint(0, 256, (3, 5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    back = cv2.imdecode(np.frombuffer(png_bytes(img), np.uint8), cv2.IMREAD_COLOR)
    assert (torch.from_numpy(back[..., ::-1].copy()).permute(2, 0, 1) == img).all()


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(3, 3), "bool or uint8"),
    (torch.zeros(4, 3, 3, dtype=torch.uint8), "bool or uint8"),
    (torch.zeros(0, 3, dtype=torch.bool), "non-empty"),
])
def test_png_bytes_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        png_bytes(bad)


@pytest.mark.parametrize("fn", [coco_rle, brush_rle])
def test_rle_rejects_non_bool(fn):
    with pytest.raises(TypeError, match="torch.bool"):
        fn(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2 dimensions"):
        fn(torch.zeros(2, 2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- tasks
def pool(seed=0, n=3, h=6, w=7, s=5):
    g = torch.Generator().manual_seed(seed)
    sp = torch.randint(0, s, (n, h, w), generator=g)
    sp[0, 0, 0] = -1
    img = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    return sp, img, s


def ref_outline(img, masks):
    out = img.clone()
    _, h, w = img.shape
    for m in masks:
        for y in range(h):
            for x in range(w):
                nb = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
                if m[y, x] and any(not (0 <= a < h and 0 <= b < w) or not m[a, b] for a, b in nb):
                    out[:, y, x] = torch.tensor([255, 0, 255], dtype=torch.uint8)
    return out


@pytest.mark.parametrize("per", ["superpixel", "image"])
@pytest.mark.parametrize("outline", [False, True])
def test_tasks_against_reference(per, outline):
    sp, img, s = pool()
    picks = [(2, 1), (0, 3), (2, 4), (1, 0), (0, 0)]
    out = tasks(sel(picks), sp, img, num_superpixels=s, per=per, round=3, outline=outline)
    if per == "superpixel":
        groups = [(n, [k]) for n, k in picks]
    else:
        groups = [(2, [1, 4]), (0, [3, 0]), (1, [0])]
    assert len(out) == len(groups)
    json.dumps(out)  # plain JSON
    for t, (n, sps) in zip(out, groups):
        d = t["data"]
        assert (d["oreal_round"], d["oreal_image"], d["oreal_superpixels"]) == (3, n, sps)
        assert d["image"].startswith("data:image/png;base64,")
        rows = ref_png_decode(base64.b64decode(d["image"].split(",", 1)[1]))
        masks = [sp[n] == k for k in sps]
        want = ref_outline(img[n], masks) if outline else img[n]
        assert rows == want.permute(1, 2, 0).tolist()
        (pred,) = t["predictions"]
        assert [r["id"] for r in pred["result"]] == [f"sp{k}" for k in sps]
        for r, k in zip(pred["result"], sps):
            assert (r["type"], r["from_name"], r["to_name"]) == ("brushlabels", "region", "image")
            assert (r["original_height"], r["original_width"]) == (6, 7)
            assert r["value"]["brushlabels"] == ["region"]
            flat = ref_brush_decode(r["value"]["rle"])
            assert flat[3::4] == [255 if v == k else 0 for v in sp[n].flatten().tolist()]


def test_tasks_with_urls_and_inputs_untouched():
    sp, img, s = pool()
    before = sp.clone()
    urls = [f"/data/img{i}.png" for i in range(3)]
    out = tasks(sel([(1, 2)]), sp, urls, num_superpixels=s)
    assert out[0]["data"]["image"] == "/data/img1.png"
    assert torch.equal(sp, before)
    assert tasks(sel([]), sp, urls, num_superpixels=s) == []


@pytest.mark.parametrize("kw, err, msg", [
    (dict(picks=[(0, 1), (0, 1)]), ValueError, "repeated"),
    (dict(picks=[(3, 1)]), ValueError, r"image ids in \[0, 3\)"),
    (dict(picks=[(0, 5)]), ValueError, r"superpixel ids in \[0, 5\)"),
    (dict(images=["a", "b"]), TypeError, "3 non-empty URL"),
    (dict(images="abc"), TypeError, "URL"),
    (dict(images=torch.zeros(3, 3, 6, 7)), TypeError, "uint8"),
    (dict(images=torch.zeros(3, 6, 7, 3, dtype=torch.uint8)), ValueError, r"\(3, 3, 6, 7\)"),
    (dict(images=["a", "b", "c"], outline=True), ValueError, "outline"),
    (dict(per="pixel"), ValueError, "`per`"),
    (dict(round=-1), ValueError, "`round`"),
])
def test_tasks_rejects(kw, err, msg):
    sp, img, s = pool()
    picks = kw.pop("picks", [(0, 1)])
    kw.setdefault("images", img)
    with pytest.raises(err, match=msg):
        tasks(sel(picks), sp, num_superpixels=s, **kw)


# ---------------------------------------------------------------------------------------------- answers
CLS = ["sky", "road", "car"]


def ann(aid, choices, rid=None, cancelled=False):
    r = {"type": "choices", "from_name": "class", "to_name": "image", "value": {"choices": choices}}
    if rid is not None:
        r["id"] = rid
    return {"id": aid, "was_cancelled": cancelled, "result": [] if cancelled else [r]}


def task(tid, n, sps, anns, rnd=0):
    return {"id": tid, "data": {"image": "x", "oreal_round": rnd, "oreal_image": n, "oreal_superpixels": sps},
            "annotations": anns}


PICKS = [(0, 1), (1, 2), (1, 0)]


def good_export():
    return [task(1, 0, [1], [ann(1, ["road"])]),
            task(2, 1, [2, 0], [{"id": 2, "was_cancelled": False, "result": [
                ann(0, ["car"], "sp2")["result"][0], ann(0, ["sky"], "sp0")["result"][0]]}])]


def test_read_answers_dominant_against_expected():
    got = read_answers(good_export(), sel(PICKS), CLS, num_images=2, num_superpixels=3)
    want = torch.full((2, 3), -1)
    want[0, 1], want[1, 2], want[1, 0] = 1, 2, 0
    assert torch.equal(got.labels, want) and got.labels.dtype == torch.int64
    assert torch.equal(got.labeled, want >= 0)


def test_read_answers_weak_void_merge_and_file(tmp_path):
    export = [task(1, 0, [1], [ann(1, ["car", "sky"])]), task(2, 1, [2], [ann(2, ["none"])])]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    labels = torch.zeros(2, 3, 3, dtype=torch.bool)
    labels[1, 1, 1] = True
    before = labels.clone()
    got = read_answers(str(path), sel([(0, 1), (1, 2)]), CLS, num_images=2, num_superpixels=3, weak=True,
                       void="none", labels=labels)
    assert torch.equal(labels, before)
    want = before.clone()
    want[0, 1, [0, 2]] = True
    assert torch.equal(got.labels, want)
    assert got.labeled.tolist() == [[False, True, False], [False, True, True]]


def test_read_answers_agreeing_duplicates_cancelled_and_relabel_same():
    export = good_export() + [task(3, 0, [1], [ann(5, ["road"]), ann(6, [], cancelled=True)])]
    labels = torch.full((2, 3), -1)
    labels[0, 1] = 1  # already known with the same class: fine
    got = read_answers(export, sel(PICKS), CLS, num_images=2, num_superpixels=3, labels=labels)
    assert int(got.labels[0, 1]) == 1


def test_read_answers_void_dominant_is_labeled_minus_one():
    export = [task(1, 0, [1], [ann(1, ["n/a"])])]
    got = read_answers(export, sel([(0, 1)]), CLS, num_images=1, num_superpixels=3, void="n/a")
    assert got.labels.tolist() == [[-1, -1, -1]] and got.labeled.tolist() == [[False, True, False]]


def _cases():
    e = good_export
    known = torch.full((2, 3), -1)
    known[1, 0] = 2
    return [
        ("missing", e()[:1], {}, "superpixel 2 of image 1: not answered: no task"),
        ("skipped", [e()[0], task(2, 1, [2, 0], [ann(9, [], cancelled=True)])], {}, r"skipped \(task 2\)"),
        ("twice", e() + [task(4, 0, [1], [ann(7, ["sky"])])], {}, "answered differently twice"),
        ("unknown", [task(1, 0, [1], [ann(1, ["truck"])])] + e()[1:], {}, "unknown class 'truck'"),
        ("no class", [task(1, 0, [1], [ann(1, [])])] + e()[1:], {}, "names no class"),
        ("two classes", [task(1, 0, [1], [ann(1, ["sky", "car"])])] + e()[1:], {}, "for a dominant label"),
        ("void and class", [task(1, 0, [1], [ann(1, ["sky", "void"])])] + e()[1:], {"void": "void"},
         "together with a class"),
        ("other round", [task(1, 0, [1], [ann(1, ["sky"])], rnd=1)] + e()[1:], {}, "made for round 1"),
        ("bool round", [task(1, 0, [1], [ann(1, ["sky"])], rnd=False)] + e()[1:], {}, "made for round False"),
        ("float round", [task(1, 0, [1], [ann(1, ["sky"])], rnd=0.0)] + e()[1:], {}, "made for round 0.0"),
        ("foreign task", [{"id": 8, "data": {"image": "x"}, "annotations": []}] + e(), {}, "not a task made by"),
        ("not picked", e() + [task(5, 0, [2], [ann(1, ["sky"])])], {}, "did not pick"),
        ("float image id", [task(1, 0.0, [1], [ann(1, ["sky"])])] + e()[1:], {},
         "task 1: 'oreal_image' should be an integer and 'oreal_superpixels' a non-empty list of integers, but got "
         "0.0 and \\[1\\]"),
        ("bool image id", [task(1, False, [1], [ann(1, ["sky"])])] + e()[1:], {}, "but got False and"),
        ("float superpixel", [task(1, 0, [1.0], [ann(1, ["sky"])])] + e()[1:], {}, "and \\[1.0\\]"),
        ("list image id", [task(1, [0], [1], [ann(1, ["sky"])])] + e()[1:], {}, "but got \\[0\\] and"),
        ("annotation not an object", [dict(e()[0], annotations=["sky"])] + e()[1:], {},
         "task 1: 'annotations' should be a list of annotation objects, but got \\['sky'\\]"),
        ("annotations not a list", [dict(e()[0], annotations={"result": []})] + e()[1:], {},
         "'annotations' should be a list"),
        ("unknown region", e()[:1] + [task(2, 1, [2, 0], [ann(3, ["sky"], rid="xyz")])], {}, "region id 'xyz'"),
        ("overwrite", e(), {"labels": known}, "already labeled \\['car'\\], answered \\['sky'\\]"),
        ("overwrite via labeled", e(), {"labeled": torch.tensor([[0, 1, 0], [0, 0, 0]]).bool()},
         "already labeled \\[\\], answered \\['road'\\]"),
    ]


@pytest.mark.parametrize("name, export, kw, msg", _cases(), ids=[c[0] for c in _cases()])
def test_read_answers_errors(name, export, kw, msg):
    with pytest.raises(AnswerError, match=msg) as info:
        read_answers(export, sel(PICKS), CLS, num_images=2, num_superpixels=3, **kw)
    assert info.value.problems


@pytest.mark.parametrize("kw, err, msg", [
    (dict(export={"a": 1}), TypeError, "list of tasks"),
    (dict(labels=torch.zeros(2, 3)), TypeError, "torch.int64"),
    (dict(labels=torch.tensor([[-1, 7, -1], [-1, -1, -1]])), ValueError,
     r"`labels` to hold class ids in \[0, 3\) or -1, but found 7"),
    (dict(labels=torch.zeros(2, 4, dtype=torch.long)), ValueError, r"\(2, 3\)"),
    (dict(labeled=torch.zeros(2, 3)), TypeError, "torch.bool"),
    (dict(num_images=0), ValueError, "`num_images`"),
])
def test_read_answers_rejects_bad_arguments(kw, err, msg):
    kw.setdefault("export", good_export())
    kw.setdefault("num_images", 2)
    with pytest.raises(err, match=msg):
        read_answers(selection=sel(PICKS), class_names=CLS, num_superpixels=3, **kw)


def test_read_answers_not_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{oops")
    with pytest.raises(ValueError, match="not JSON"):
        read_answers(p, sel(PICKS), CLS, num_images=2, num_superpixels=3)


def test_round_trip_with_the_oracle():
    """Tasks -> answers an annotator would give (the oracle's) -> labels equal to the oracle's."""
    from examples.oracle import Oracle

    g = torch.Generator().manual_seed(1)
    sp = torch.randint(0, 6, (4, 8, 8), generator=g)
    gt = torch.randint(0, 3, (4, 8, 8), generator=g)
    gt[0] = 255  # image 0: all ignore -> the annotator answers void
    orc = Oracle(gt, sp, 6, 3)
    picks = sel([(0, 2), (3, 1), (1, 5), (3, 4), (2, 0)])
    for per in ("superpixel", "image"):
        out = tasks(picks, sp, [f"u{i}" for i in range(4)], num_superpixels=6, per=per)
        export = []
        for i, t in enumerate(out):
            n = t["data"]["oreal_image"]
            res = [{"id": f"sp{k}", "type": "choices", "from_name": "class", "to_name": "image",
                    "value": {"choices": [CLS[int(orc.dominant[n, k])] if orc.dominant[n, k] >= 0 else "void"]}}
                   for k in t["data"]["oreal_superpixels"]]
            export.append(dict(t, id=i, annotations=[{"id": i, "was_cancelled": False, "result": res}]))
        got = read_answers(export, picks, CLS, num_images=4, num_superpixels=6, void="void")
        want = torch.full((4, 6), -1)
        want[picks.image, picks.superpixel] = orc.dominant[picks.image, picks.superpixel]
        assert torch.equal(got.labels, want)
        assert int(got.labeled.sum()) == 5


def test_cli_files_only_round_and_refusals(tmp_path, monkeypatch, capsys):
    """examples/label_studio.py without a server: push --files-only, answers in an export file, pull --export."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    from examples import label_studio as L
    from examples.al_loop import Experiment

    monkeypatch.setenv("OREAL_CACHE", str(tmp_path / "cache"))
    tiny = ["--out", str(tmp_path / "run"), "--size", "32x32", "--limits", "6,2,2", "--sp-count", "16", "--budget",
            "4", "--rounds", "1", "--width", "4", "--threads", "1"]
    logs = []
    assert L.main(["push", "--files-only", *tiny], log=logs.append) == 0
    assert L.main(["push", "--files-only", *tiny], log=logs.append) == 2  # already pushed
    capsys.readouterr()
    assert L.main(["train", *tiny], log=logs.append) == 2  # it silently did nothing
    assert "no round has been pulled yet: nothing to train on" in capsys.readouterr().err
    pushed = json.loads((tmp_path / "run" / "round_0" / "tasks.json").read_text())
    assert len(pushed) == 4 and len(list((tmp_path / "run" / "round_0" / "masks").glob("*.png"))) == 4
    exp = Experiment(L._cfg(L.build_parser().parse_args(["status", *tiny])), tmp_path / "run", progress=False,
                     cache_dir=tmp_path / "cache")
    names, dom = exp.dataset.classes, exp.oracle.dominant

    def answered(tasks):  # the oracle's answers, as Label Studio exports them
        return [dict(t, id=i, annotations=[{"id": i, "was_cancelled": False, "result": [
            {"type": "choices", "from_name": "class", "value": {"choices": [
                names[int(dom[t["data"]["oreal_image"], s])] if dom[t["data"]["oreal_image"], s] >= 0 else L.VOID]}}
            for s in t["data"]["oreal_superpixels"]]}]) for i, t in enumerate(tasks)]

    export = answered(pushed)
    wrong = json.loads(json.dumps(export))
    for t in wrong:
        t["data"]["oreal_round"] = 1
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    (tmp_path / "export.json").write_text(json.dumps(export))
    before = (tmp_path / "run" / "state.pt").read_bytes()
    assert L.main(["pull", "--export", str(tmp_path / "wrong.json"), *tiny], log=logs.append) == 2
    assert (tmp_path / "run" / "state.pt").read_bytes() == before  # a refused pull changes nothing
    assert L.main(["pull", "--export", str(tmp_path / "export.json"), *tiny], log=logs.append) == 0
    st = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert st["round"] == 0 and st["pending"] is None and int(st["labeled"].sum()) == 4
    assert torch.equal(st["sp_labels"][st["labeled"]], dom[st["labeled"]])
    assert L.main(["pull", "--export", str(tmp_path / "export.json"), *tiny], log=logs.append) == 2  # nothing pending
    other = [x if x != "4" else "5" for x in tiny]  # budget and width 5: not the configuration of the state
    assert other != tiny and L.main(["status", *other], log=logs.append) == 2
    threads = [x if x != "1" else "2" for x in tiny]  # --threads and --outline are fixed for a run too
    assert L.main(["status", *threads], log=logs.append) == 2
    assert L.main(["status", "--outline", *tiny], log=logs.append) == 2
    assert L.main(["status", *tiny], log=logs.append) == 0
    # --rounds only says when to stop: once the rounds are done, a larger --rounds goes on in the same folder
    assert L.main(["push", "--files-only", *tiny], log=logs.append) == 0  # trains on round 0, pushes round 1
    round1 = answered(json.loads((tmp_path / "run" / "round_1" / "tasks.json").read_text()))
    (tmp_path / "export1.json").write_text(json.dumps(round1))
    assert L.main(["pull", "--export", str(tmp_path / "export1.json"), *tiny], log=logs.append) == 0
    capsys.readouterr()
    assert L.main(["push", "--files-only", *tiny], log=logs.append) == 2
    assert "all 1 rounds are done (raise --rounds to go on)" in capsys.readouterr().err
    more = list(tiny)
    more[more.index("--rounds") + 1] = "2"
    assert L.main(["push", "--files-only", *more], log=logs.append) == 0
    st = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert st["pending"]["round"] == 2 and int(st["labeled"].sum()) == 8
    capsys.readouterr()
    assert L.main(["push", "--files-only", *tiny[:2], "--strategy", "foo"], log=logs.append) == 2
    assert "error: unknown strategy 'foo'" in capsys.readouterr().err
    from examples.al_loop import lock_folder
    holder = lock_folder(tmp_path / "run")  # another command working in the folder: writers wait their turn
    try:
        assert L.main(["train", *tiny], log=logs.append) == 2
        assert "another run is using the output folder" in capsys.readouterr().err
        assert L.main(["status", *tiny], log=logs.append) == 0  # reading needs no lock
    finally:
        holder.close()
    assert L.main(["status", "--restart", *other], log=logs.append) == 0 and logs[-1] == "null"  # a new run


class _FakeServer:
    """In-memory stand-in for the few Label Studio endpoints the CLI uses; ``fail_imports`` imports fail first."""

    url = "http://fake"

    def __init__(self, fail_imports=0):
        self.projects, self.fail_imports = {}, fail_imports

    def create_project(self, title, label_config):
        pid = len(self.projects) + 1
        self.projects[pid] = {"title": title, "config": label_config, "tasks": []}
        return {"id": pid}

    def project(self, pid):
        return {"id": pid, "title": self.projects[pid]["title"]}

    def tasks(self, pid):
        return self.projects[pid]["tasks"]

    def import_tasks(self, pid, tasks):
        if self.fail_imports:
            self.fail_imports -= 1
            from examples.label_studio import ServerError
            raise ServerError("connection reset")
        start = sum(len(p["tasks"]) for p in self.projects.values())
        self.projects[pid]["tasks"] += [dict(t, id=start + i, annotations=[]) for i, t in enumerate(tasks)]

    def export(self, pid):
        return self.projects[pid]["tasks"]


def test_cli_push_resumes_after_a_failed_import_and_refuses_other_projects(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    from examples import label_studio as L
    from examples.al_loop import Experiment, StateError

    monkeypatch.setenv("OREAL_CACHE", str(tmp_path / "cache"))
    args = L.build_parser().parse_args(["push", "--out", str(tmp_path / "run"), "--size", "32x32", "--limits",
                                        "6,2,2", "--sp-count", "16", "--budget", "4", "--rounds", "1"])
    exp = Experiment(L._cfg(args), tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    server = _FakeServer(fail_imports=1)
    with pytest.raises(L.ServerError):
        L.push(exp, args, server, log=lambda *a: None)
    st = L._load(exp, args)
    assert st["pending"]["project"] == 1 and not st["pending"]["imported"]
    picks = st["pending"]["picks"]
    L.push(exp, args, server, log=lambda *a: None)  # resumes: same picks, same project, tasks imported once
    st = L._load(exp, args)
    assert st["pending"]["imported"] and st["pending"]["picks"] == picks
    assert len(server.projects) == 1 and len(server.tasks(1)) == 4
    with pytest.raises(StateError, match="already pushed"):
        L.push(exp, args, server, log=lambda *a: None)
    other = server.create_project("oreal 0000 round 0", "")["id"]  # same round, another run
    args.project = other
    with pytest.raises(StateError, match="waits for"):
        L.pull(exp, args, server, log=lambda *a: None)
    args.project, args.export = None, None
    dom, names = exp.oracle.dominant, exp.dataset.classes
    for t in server.tasks(1):
        n, (s,) = t["data"]["oreal_image"], t["data"]["oreal_superpixels"]
        t["annotations"] = [{"id": t["id"], "result": [{"type": "choices", "from_name": "class", "value": {
            "choices": [names[int(dom[n, s])] if dom[n, s] >= 0 else L.VOID]}}]}]
    st = L.pull(exp, args, server, log=lambda *a: None)
    assert torch.equal(st["sp_labels"][st["labeled"]], dom[st["labeled"]]) and int(st["labeled"].sum()) == 4


def test_import_oreal_is_enough_for_oreal_export():
    # A fresh interpreter: in this one the import above has already set the attribute. The docs write
    # `oreal.export.tasks(...)`, as for every other module of the library.
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import oreal; print(oreal.export.tasks.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0 and out.stdout.strip() == "tasks", out.stderr


def test_label_studio_client_names_a_malformed_task_list(monkeypatch):
    """A task page that is not {"tasks": [...], "total": n} (a proxy's error page, another API version) is a
    ServerError that quotes it, not a KeyError or TypeError."""
    from examples.label_studio import LabelStudio, ServerError

    client = LabelStudio("http://127.0.0.1:9", "token")
    for answer in ([], {"tasks": []}, {"tasks": None, "total": 0}, {"detail": "Not found."}):
        monkeypatch.setattr(client, "_call", lambda *args, answer=answer, **kw: answer)
        with pytest.raises(ServerError, match="expected an object with 'tasks' \\(a list\\) and 'total'"):
            client.tasks(1)
    pages = iter([{"tasks": [{"id": 1}], "total": 2}, {"tasks": [{"id": 2}], "total": 2}])
    monkeypatch.setattr(client, "_call", lambda *args, **kw: next(pages))
    assert client.tasks(1) == [{"id": 1}, {"id": 2}]
