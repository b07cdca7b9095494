"""Round trips through a real Label Studio server: tasks in, annotations through the API, export back to labels.

Marked ``labelstudio``. The server is the ``label-studio`` executable named by ``$OREAL_LABEL_STUDIO`` (or
found on ``PATH``), e.g. from its own virtual environment (``.ci/run`` makes one); without it, or with
``OREAL_SKIP_LABEL_STUDIO=1``, the module is skipped. The server starts from an empty data folder on 127.0.0.1
and a free port, and is stopped by its process id when the module ends.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import oreal
from oreal import export as ox

pytestmark = pytest.mark.labelstudio

REPO = Path(__file__).resolve().parent.parent
EXE = os.environ.get("OREAL_LABEL_STUDIO") or shutil.which("label-studio")
if os.environ.get("OREAL_SKIP_LABEL_STUDIO", "") not in ("", "0"):
    pytest.skip("OREAL_SKIP_LABEL_STUDIO is set", allow_module_level=True)
if not EXE or not os.access(EXE, os.X_OK):
    pytest.skip("no label-studio executable ($OREAL_LABEL_STUDIO or PATH)", allow_module_level=True)

from examples.label_studio import VOID, LabelStudio, answer_tasks  # noqa: E402
from oreal.export import AnswerError  # noqa: E402

START_TIMEOUT = 420  # s; a cold start (database migrations) took 60-160 s on a loaded 2-core machine


_SDK_RLE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import mask2rle
masks = json.loads(sys.stdin.read())
print(json.dumps([[int(b) for b in mask2rle(np.array(m, dtype=np.uint8) * 255)] for m in masks]))
"""


def test_brush_rle_bytes_are_the_sdks():
    """The bytes of the SDK's ``mask2rle`` (run by the Label Studio environment's Python), for runs in every size
    class and around the 2^16-byte split (a pixel is 4 bytes): 16384 pixels fill one part, 16385 leave a rest."""
    python = Path(EXE).parent / "python"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no python beside {EXE} to import label_studio_sdk from")
    g = torch.Generator().manual_seed(3)
    masks = [torch.rand(5, 7, generator=g) < 0.5, torch.ones(3, 3, dtype=torch.bool)]
    for pixels in (1, 2, 4, 5, 64, 65, 16384, 16385, 16386, 16448, 16449, 32768, 32769, 40000):
        m = torch.zeros(1, pixels + 2, dtype=torch.bool)
        m[0, 1:-1] = True
        masks.append(m)
    p = subprocess.run([str(python), "-c", _SDK_RLE], input=json.dumps([m.int().tolist() for m in masks]),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [ox.brush_rle(m) for m in masks] == json.loads(p.stdout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server leads its own process group (start_new_session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_studio")
    port, token, password = _free_port(), secrets.token_hex(16), secrets.token_hex(8)
    env = dict(os.environ, LABEL_STUDIO_USERNAME="oreal@example.com", LABEL_STUDIO_PASSWORD=password,
               LABEL_STUDIO_USER_TOKEN=token, LABEL_STUDIO_COLLECT_ANALYTICS="false")
    log = open(root / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([EXE, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(root / "data"), "--enable-legacy-api-token", "--log-level", "WARNING"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}:\n"
                            + (root / "server.log").read_text(errors="replace")[-3000:])
            if time.monotonic() - t0 > START_TIMEOUT:
                pytest.fail(f"label-studio did not answer within {START_TIMEOUT} s:\n"
                            + (root / "server.log").read_text(errors="replace")[-3000:])
            try:
                req = urllib.request.Request(url + "/api/current-user/whoami",
                                             headers={"Authorization": f"Token {token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        print(f"\nlabel-studio ready after {time.monotonic() - t0:.0f} s")
        yield {"url": url, "token": token, "exe": EXE, "root": root, "user": "oreal@example.com",
               "password": password}
    finally:
        _stop(proc)
        log.close()


# ---------------------------------------------------------------------------------------------- library level
def _pool():
    from examples.data import load_synthetic
    from examples.oracle import Oracle

    ds = load_synthetic(size=(32, 32), counts=(6, 1, 1), seed=0)
    gt = torch.from_numpy(ds.train.labels)
    gt[0, :8, :8] = 255  # a superpixel of ignore pixels only: the annotator answers void
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    sp = ((ys // 8) * 4 + xs // 8).expand(6, 32, 32).contiguous()  # 16 square superpixels per image
    images = torch.from_numpy(ds.train.images).permute(0, 3, 1, 2).contiguous()
    return ds.classes, images, gt, sp, Oracle(gt, sp, 16, len(ds.classes))


def _sdk_check(server, rles, shape):
    """Our brush RLEs through the server's own SDK (label_studio_sdk.converter.brush): the masks its decoder
    reads, and whether its encoder writes the same bytes for them."""
    py = Path(server["exe"]).with_name("python")
    if not py.exists():
        return None  # a label-studio not from a virtual environment: no SDK to check with
    code = ("import json, sys\nfrom label_studio_sdk.converter.brush import decode_rle, mask2rle\n"
            f"out = []\nfor r in json.load(sys.stdin):\n    m = decode_rle(r)[3::4].reshape({shape})\n"
            "    out.append([m.tolist(), mask2rle(m) == r])\nprint(json.dumps(out))")
    out = subprocess.run([str(py), "-c", code], input=json.dumps(rles), capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout)
    return [(torch.tensor(m) > 0, same) for m, same in got]


def test_rounds_through_the_server_equal_the_oracle(server):
    classes, images, gt, sp, orc = _pool()
    client = LabelStudio(server["url"], server["token"])
    n, s = sp.shape[0], 16
    labels, labeled = torch.full((n, s), -1), torch.zeros(n, s, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)

    def oracle_answer(i, k):
        return classes[int(orc.dominant[i, k])] if orc.dominant[i, k] >= 0 else VOID

    for r, per in enumerate(["superpixel", "image"]):
        exclude = labeled.clone()
        exclude[0, 0] = True
        sel = oreal.strategies.query("random", sp_map=sp, num_superpixels=s, budget=8, exclude=exclude, generator=gen)
        if r == 0:  # also the superpixel of ignore pixels only: the answer is void
            sel = oreal.Selection(torch.cat([sel.image, torch.tensor([0])]), torch.cat([sel.superpixel,
                                  torch.tensor([0])]), torch.full((9,), -1), torch.zeros(9))
        tasks = ox.tasks(sel, sp, images, num_superpixels=s, per=per, round=r, outline=r == 1)
        pid = client.create_project(f"oreal test round {r}", ox.labeling_config(classes, per=per, void=VOID))["id"]
        client.import_tasks(pid, tasks)
        server_tasks = client.tasks(pid)
        assert len(server_tasks) == len(tasks)
        if r == 1:  # a skipped task is reported, then answered by another annotation
            client.annotate(server_tasks[0]["id"], [], cancelled=True)
            with pytest.raises(AnswerError, match=f"skipped \\(task {server_tasks[0]['id']}\\)"):
                ox.read_answers(client.export(pid), sel, classes, num_images=n, num_superpixels=s, round=r,
                                void=VOID, labels=labels, labeled=labeled)
        assert answer_tasks(client, pid, oracle_answer) == len(tasks)
        export = client.export(pid)
        got = ox.read_answers(export, sel, classes, num_images=n, num_superpixels=s, round=r, void=VOID,
                              labels=labels, labeled=labeled)
        want = labels.clone()
        want[sel.image, sel.superpixel] = orc.dominant[sel.image, sel.superpixel]
        assert torch.equal(got.labels, want)
        assert torch.equal(got.labeled, labeled | (torch.zeros_like(labeled).index_put_(
            (sel.image, sel.superpixel), torch.tensor(True))))
        if r == 0:
            # the pre-filled regions the server stored decode (with Label Studio's SDK) to the superpixels
            preds = [(t["data"]["oreal_image"], res["id"], res["value"]["rle"])
                     for t in export for p in client.predictions(t["id"]) for res in p["result"]]
            checked = _sdk_check(server, [x[2] for x in preds], (32, 32))
            for (i, rid, _), (m, same_bytes) in zip(preds, checked or []):
                assert torch.equal(m, sp[i] == int(rid[2:])) and same_bytes
            # a second annotator who disagrees is reported
            t0 = export[0]
            k = t0["data"]["oreal_superpixels"][0]
            other = next(c for c in classes if c != oracle_answer(t0["data"]["oreal_image"], k))
            client.annotate(t0["id"], [{"id": "x1", "type": "choices", "from_name": "class", "to_name": "image",
                                        "value": {"choices": [other]}}])
            with pytest.raises(AnswerError, match="answered differently twice"):
                ox.read_answers(client.export(pid), sel, classes, num_images=n, num_superpixels=s, round=r,
                                void=VOID, labels=labels, labeled=labeled)
        labels, labeled = got
    assert int(labeled.sum()) == 17


def test_weak_labels_through_the_server_with_a_personal_access_token(server):
    classes, images, gt, sp, orc = _pool()
    # a personal access token (a JWT refresh token; the default kind of token since Label Studio 1.23), which
    # the client exchanges for Bearer access tokens
    pat = LabelStudio(server["url"], server["token"])._call("POST", "/api/token/", {})["token"]
    client = LabelStudio(server["url"], pat)
    assert client.personal
    present = oreal.superpixel_label_counts(gt, sp, 16, len(classes), ignore_index=255) > 0  # (N, S, C)
    sel = oreal.Selection(torch.tensor([1, 2, 2]), torch.tensor([5, 0, 9]), torch.full((3,), -1), torch.zeros(3))
    pid = client.create_project("oreal test weak", ox.labeling_config(classes, weak=True, per="image"))["id"]
    client.import_tasks(pid, ox.tasks(sel, sp, images, num_superpixels=16, per="image", round=0))
    for t in client.tasks(pid):
        i = t["data"]["oreal_image"]
        client.annotate(t["id"], [{"id": f"sp{k}", "type": "choices", "from_name": "class", "to_name": "image",
                                   "value": {"choices": [classes[c] for c in range(len(classes)) if present[i, k, c]]}}
                                  for k in t["data"]["oreal_superpixels"]])
    got = ox.read_answers(client.export(pid), sel, classes, num_images=6, num_superpixels=16, weak=True)
    want = torch.zeros_like(present)
    want[sel.image, sel.superpixel] = present[sel.image, sel.superpixel]
    assert torch.equal(got.labels, want) and int(got.labeled.sum()) == 3


# ---------------------------------------------------------------------------------------------- the CLI
TINY = ["--size", "32x32", "--limits", "8,2,2", "--sp-count", "16", "--budget", "4", "--rounds", "2",
        "--max-epochs", "1", "--patience", "1", "--width", "4", "--threads", "1"]


def test_cli_push_pull_rounds(server, tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    from examples.al_loop import Experiment
    from examples.label_studio import _cfg, build_parser

    out = tmp_path / "run"
    env = dict(os.environ, OREAL_CACHE=str(tmp_path / "cache"), LABEL_STUDIO_URL=server["url"],
               LABEL_STUDIO_API_KEY=server["token"],
               PYTHONPATH=os.pathsep.join([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
                                          + [str(REPO)]))

    def cli(*args, rc=0):
        p = subprocess.run([sys.executable, "-m", "examples.label_studio", *args, "--out", str(out), *TINY],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == rc, p.stdout + p.stderr
        return p.stdout + p.stderr

    exp = Experiment(_cfg(build_parser().parse_args(["status", *TINY])), out, progress=False,
                     cache_dir=tmp_path / "cache")

    def check_state(round_, clicks, pending=None):
        st = torch.load(out / "state.pt", weights_only=True)
        assert st["round"] == round_ and st["clicks"] == clicks
        assert (st["pending"] or {}).get("round") == pending
        lab = st["labeled"]
        assert int(lab.sum()) == clicks
        assert torch.equal(st["sp_labels"][lab], exp.oracle.dominant[lab])
        return st

    cli("push")
    assert "already pushed" in cli("push", rc=2)
    cli("simulate")
    cli("pull")
    check_state(0, 4)
    assert "nothing to pull" in cli("pull", rc=2)
    cli("push")  # trains on round 0, selects round 1
    st = torch.load(out / "state.pt", weights_only=True)
    assert st["pending"]["round"] == 1 and [h["round"] for h in st["history"]] == [0]
    # the round-0 project cannot be pulled into round 1
    assert "waits for 'oreal" in cli("pull", "--project", str(st["pulled"][0]["project"]), rc=2)
    cli("simulate")
    cli("next")  # pull round 1, train, push round 2
    st = check_state(1, 8, pending=2)
    assert [h["round"] for h in st["history"]] == [0, 1]


# ---------------------------------------------------------------------------------------------- the UI
class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4), standard library only."""

    def __init__(self, exe, profile):
        # fd 3 of the browser reads our commands (its stdin pipe), fd 4 writes the replies (its stdout pipe)
        cmd = ["bash", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null', exe, "--headless=new",
               "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.n, self.buf, self.session = 0, b"", None

    def _read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, params=None, *, timeout=60):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def open(self):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def eval(self, expr):
        return self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})["result"].get("value")

    def wait(self, expr, timeout):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.eval(expr):
                    return
            except RuntimeError:  # navigating: no context yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout} s for {expr}")

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)


def _js_click(selector, text):
    """JS: click the first ``selector`` element whose text starts with ``text`` (its input if it has one)."""
    return (f"(() => {{ const els = [...document.querySelectorAll({json.dumps(selector)})].filter("
            f"e => e.textContent.trim().startsWith({json.dumps(text)})); if (!els.length) return false; "
            f"(els[0].querySelector('input') || els[0]).click(); return true; }})()")


def test_task_renders_and_is_answered_in_the_ui(server, tmp_path):
    """The generated config in Label Studio's labeling UI: a screenshot of a task (per image, two picks) that is
    not blank, shows the pre-filled magenta regions and offers every class; then each region is selected and
    given the oracle's class with the mouse's clicks, the task submitted, and the export read back."""
    exe = os.environ.get("OREAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no chromium ($OREAL_CHROMIUM or PATH)")
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    classes, images, gt, sp, orc = _pool()
    client = LabelStudio(server["url"], server["token"])
    sel = oreal.Selection(torch.tensor([2, 2]), torch.tensor([9, 6]), torch.tensor([-1, -1]), torch.zeros(2))
    pid = client.create_project("oreal test ui", ox.labeling_config(classes, per="image", void=VOID))["id"]
    client.import_tasks(pid, ox.tasks(sel, sp, images, num_superpixels=16, per="image"))
    browser = _Chromium(exe, tmp_path / "profile")
    try:
        browser.open()
        browser.send("Page.navigate", {"url": server["url"] + "/user/login/"})
        browser.wait("!!document.querySelector('input[name=email]')", 60)
        browser.eval(f"document.querySelector('input[name=email]').value = {json.dumps(server['user'])};"
                     f"document.querySelector('input[name=password]').value = {json.dumps(server['password'])};"
                     "document.querySelector('form').submit(); true")
        browser.wait("location.pathname.indexOf('/user/login') < 0", 60)
        browser.send("Page.navigate", {"url": f"{server['url']}/projects/{pid}/data?labeling=1"})
        browser.wait("document.querySelectorAll('.lsf-outliner-item').length == 2", 120)
        time.sleep(3)  # the image and the brush layer are drawn after the regions are listed
        rects = browser.eval("JSON.stringify([...document.querySelectorAll('canvas')].map(c => {"
                             "const r = c.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }))")
        png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
        texts = []
        for k in range(2):  # select each region in the outliner, read its id, click the oracle's class
            assert browser.eval(f"(() => {{ const e = [...document.querySelectorAll('.lsf-outliner-item')[{k}]"
                                ".querySelectorAll('*')].find(x => !x.children.length && x.textContent.trim() == "
                                "'region'); if (!e) return false; e.click(); return true; })()")
            browser.wait("/\\bsp\\d+\\b/.test(document.body.innerText)", 20)  # the selected region's id
            text = browser.eval("document.body.innerText")
            texts.append(text)
            s = int(re.search(r"\bsp(\d+)\b", text).group(1))
            want = int(orc.dominant[2, s])
            assert browser.eval(_js_click("label", classes[want] if want >= 0 else VOID)), text[:500]
            time.sleep(0.5)
        assert browser.eval(_js_click("button", "Submit"))
        t0 = time.monotonic()
        while not client.tasks(pid)[0].get("total_annotations"):
            assert time.monotonic() - t0 < 30, "the submitted annotation did not reach the server"
            time.sleep(0.5)
    finally:
        browser.close()
    (tmp_path / "task.png").write_bytes(png)
    for name in classes + [VOID]:
        assert name in texts[0], f"{name!r} not offered for a selected region: {texts[0][:500]!r}"
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(int)  # RGB
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 1000  # not blank: the image is there
    magenta = (shot[..., 0] > 180) & (shot[..., 1] < 110) & (shot[..., 2] > 180)
    x0, y0, x1, y1 = (int(round(v)) for v in max(json.loads(rects), key=lambda q: (q[2] - q[0]) * (q[3] - q[1])))
    pix = images[2].permute(1, 2, 0).int()
    assert int(((pix[..., 0] > 180) & (pix[..., 1] < 110) & (pix[..., 2] > 180)).sum()) == 0  # none in the image
    # the two pre-filled regions (8 x 8 of 32 x 32 pixels each) are drawn in magenta over the image
    area = max(x1 - x0, 1) * max(y1 - y0, 1)
    assert int(magenta[max(y0, 0):y1, max(x0, 0):x1].sum()) > 2 * area / 16 * 0.5, (rects, int(magenta.sum()))
    # the answers given in the UI (per-region choices keep the ids of the pre-filled regions) read back
    got = ox.read_answers(client.export(pid), sel, classes, num_images=6, num_superpixels=16, void=VOID)
    assert got.labels[2, [9, 6]].tolist() == orc.dominant[2, [9, 6]].tolist()
    assert int(got.labeled.sum()) == 2
