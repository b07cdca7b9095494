"""Active learning with human annotators in Label Studio: push a round's picks as tasks, pull the answers back.

Run ``python -m examples.label_studio --help``; the steps are in ``docs/labelstudio.md``. One round:

- ``push``: train on the labeled set (round 0: nothing to train, random picks), select the round's superpixels,
  create a Label Studio project (``oreal <run> round <r>``) with the generated labeling config and import one
  task per pick (or per image). The round's ``tasks.json``, ``config.xml``, PNG masks and COCO RLE are written
  under ``OUT/round_<r>/`` too.
- the annotators label the project in Label Studio;
- ``pull``: read the project's export through the API (or ``--export FILE``), check it with
  ``oreal.export.read_answers`` and add the answers to the labeled set;
- ``next`` (= ``pull`` then ``push``) for every further round.

The state (``OUT/state.pt``, written atomically with the helpers of ``examples/al_loop.py``) records the pending
round: pushing twice, pulling what was not pushed, or reading another run's or round's project is refused, and
a command interrupted midway resumes where it stopped. The server is reached with ``--url`` and ``--token``
(or ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``): a legacy API token or a personal access token.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import torch

import oreal
from oreal import export as ox
from oreal.labels import region_masks

from .al_loop import (Experiment, LoopConfig, StateError, _needs_mc, _sub_seed, atomic_write_bytes, check_strategies,
                      load_state, lock_folder, parse_strategy, save_state, write_json)
from .data import DataError
from .train import TrainConfig, predict_logits, predict_mc

VOID = "void"  # the answer for a region without a class (all ignore pixels): labeled, no class


class ServerError(RuntimeError):
    """Label Studio answered with an error, or could not be reached."""


# ----------------------------------------------------------------------------------------------------------
# a minimal Label Studio REST client (standard library only)
class LabelStudio:
    """``url`` of the server and a ``token``: a legacy API token (``Authorization: Token``) or a personal access
    token (a JWT refresh token, exchanged at ``/api/token/refresh/`` for short-lived ``Bearer`` access tokens)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0):
        if not url or not token:
            raise ServerError("a Label Studio URL and API token are needed: pass --url and --token or set "
                              "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.personal = token.count(".") == 2  # JWT
        self._access = None

    def _auth(self, refresh=False):
        if not self.personal:
            return f"Token {self.token}"
        if self._access is None or refresh:
            self._access = self._call("POST", "/api/token/refresh/", {"refresh": self.token}, auth=None)["access"]
        return f"Bearer {self._access}"

    def _call(self, method, path, body=None, *, auth="auto"):
        for attempt in range(2):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if auth == "auto":
                headers["Authorization"] = self._auth(refresh=attempt > 0)
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                if e.code == 401 and self.personal and auth == "auto" and attempt == 0:
                    continue  # access token expired: refresh once
                detail = e.read()[:500].decode(errors="replace")
                raise ServerError(f"Label Studio {method} {path}: HTTP {e.code}: {detail}") from e
            except (urllib.error.URLError, OSError) as e:
                raise ServerError(f"cannot reach Label Studio at {self.url} ({e})") from e

    def create_project(self, title, label_config):
        return self._call("POST", "/api/projects/", {"title": title, "label_config": label_config})

    def project(self, pid):
        return self._call("GET", f"/api/projects/{int(pid)}/")

    def import_tasks(self, pid, tasks):
        return self._call("POST", f"/api/projects/{int(pid)}/import?return_task_ids=true", tasks)

    def tasks(self, pid):
        out, page = [], 1
        while True:
            got = self._call("GET", f"/api/tasks/?project={int(pid)}&page={page}&page_size=100")
            if not (isinstance(got, dict) and isinstance(got.get("tasks"), list) and isinstance(got.get("total"), int)):
                raise ServerError(f"GET /api/tasks/ of project {pid}: expected an object with 'tasks' (a list) and "
                                  f"'total' (an integer), but got {str(got)[:200]}")
            out += got["tasks"]
            if len(out) >= got["total"] or not got["tasks"]:
                return out
            page += 1

    def predictions(self, task_id):
        return self._call("GET", f"/api/predictions/?task={int(task_id)}")

    def annotate(self, task_id, result, *, cancelled=False):
        """Submit an annotation (``cancelled=True``: the annotator skipped the task)."""
        return self._call("POST", f"/api/tasks/{int(task_id)}/annotations/",
                          {"result": result, "was_cancelled": cancelled})

    def export(self, pid):
        """All tasks of the project with their annotations (Label Studio's JSON export)."""
        return self._call("GET", f"/api/projects/{int(pid)}/export?exportType=JSON&download_all_tasks=true")


# ----------------------------------------------------------------------------------------------------------
# state
def _cfg(a) -> LoopConfig:
    check_strategies((a.strategy,))  # an unknown name is refused before round 0, not after it
    tc = asdict(TrainConfig(max_epochs=a.max_epochs, patience=a.patience))
    return LoopConfig(data=a.data, root=a.root, size=a.size, limits=a.limits, sp_count=a.sp_count, width=a.width,
                      strategies=(a.strategy,), seeds=(a.seed,), rounds=a.rounds, budget=a.budget,
                      full_supervision=False, train=tc, threads=a.threads)


def _fingerprint(exp: Experiment, a) -> dict:
    """What a command must share with the state. Not ``rounds``: it only says when to stop (there is no
    full-supervision schedule here), so a finished folder goes on with a larger ``--rounds``."""
    fp = dict(exp.fp, strategy=a.strategy, seed=a.seed, per=a.per, outline=a.outline)
    del fp["rounds"]
    return fp


def _load(exp, a):
    path = Path(a.out) / "state.pt"
    if not path.exists():
        return None
    # The identity check refuses a state of another kind (an al_loop run), strategy or seed.
    return load_state(path, _fingerprint(exp, a), Experiment.identity("labelstudio", a.seed, a.strategy))


def _save(a, st):
    save_state(Path(a.out) / "state.pt", st)


def _new_state(exp, a):
    st = exp._new_state("labelstudio", a.seed)
    st.update(Experiment.identity("labelstudio", a.seed, a.strategy), config=_fingerprint(exp, a))
    st.update(run=secrets.token_hex(4), pending=None, trained_round=-1)
    return st


# ----------------------------------------------------------------------------------------------------------
# steps
def _train(exp, st, a, log):
    """Train (warm start) on the labeled set of the last pulled round, once per round."""
    r = st["round"]
    if st["trained_round"] == r:
        return
    model = exp.new_model(a.seed)
    if st["model"]:
        model.load_state_dict(st["model"])
    log(f"training on {int(st['labeled'].sum())} labeled superpixels (round {r})")
    model, info = exp._train(model, exp.target(st), _sub_seed("train", a.seed, r))
    st["model"], st["trained_round"] = model.state_dict(), r
    counts = oreal.class_counts(st["sp_labels"][st["labeled"]], exp.C)
    st["history"].append({"round": r, "clicks": st["clicks"], "test_miou": info["test_miou"],
                          "val_miou": info["val_miou"], "class_counts": counts.tolist()})
    log(f"round {r}: test mIoU {info['test_miou']:.3f}")


def _select(exp, st, a, r):
    gen = torch.Generator()
    gen.set_state(st["rng"])
    if r == 0:
        sel = oreal.strategies.query("random", sp_map=exp.sp_map, num_superpixels=exp.S, budget=exp.budget,
                                     exclude=st["labeled"].clone(), generator=gen)
    else:
        name, agg = parse_strategy(a.strategy)
        model = exp.new_model(a.seed)
        model.load_state_dict(st["model"])
        logits = predict_logits(model, exp.pool, exp.tcfg.eval_batch)
        kw = {}
        if _needs_mc(name):
            kw["mc_probs"] = predict_mc(model, exp.pool, exp.cfg.mc_samples, exp.tcfg.eval_batch,
                                        _sub_seed("mc", a.seed, r))
        counts = oreal.class_counts(st["sp_labels"][st["labeled"]], exp.C)
        sel = oreal.strategies.query(name, sp_map=exp.sp_map, num_superpixels=exp.S, budget=exp.budget,
                                     probs=logits.softmax(1), logits=logits, images=exp.pool,
                                     labeled_counts=counts, exclude=st["labeled"].clone(), aggregation=agg,
                                     generator=gen, **kw)
    return sel, gen.get_state()


def _selection(pending):
    img, sp = (torch.tensor(x, dtype=torch.long) for x in pending["picks"])
    return oreal.Selection(img, sp, torch.full_like(img, -1), torch.zeros(len(img)))


def _write_round_files(exp, a, r, sel, tasks, config):
    d = Path(a.out) / f"round_{r}"
    write_json(d / "tasks.json", tasks)
    atomic_write_bytes(d / "config.xml", lambda f: f.write(config.encode()))
    coco = []
    for n, s, mask in zip(sel.image.tolist(), sel.superpixel.tolist(), region_masks(sel, exp.sp_map)):
        atomic_write_bytes(d / "masks" / f"image{n}_sp{s}.png", lambda f, m=mask: f.write(ox.png_bytes(m)))
        coco.append({"image": n, "superpixel": s, "segmentation": ox.coco_rle(mask)})
    write_json(d / "coco_rle.json", coco)
    return d


def push(exp, a, client, log=print):
    st = _load(exp, a) or _new_state(exp, a)
    p = st["pending"]
    if p is not None and p.get("imported"):
        raise StateError(f"round {p['round']} is already pushed (project {p['project']}) and not pulled yet: run "
                         f"`pull` once its tasks are annotated")
    if p is None:
        r = st["round"] + 1
        if r > exp.cfg.rounds:
            raise StateError(f"all {exp.cfg.rounds} rounds are done (raise --rounds to go on)")
        if r > 0:
            _train(exp, st, a, log)
            _save(a, st)
        sel, rng = _select(exp, st, a, r)
        p = {"round": r, "picks": [sel.image.tolist(), sel.superpixel.tolist()], "project": None,
             "imported": False, "title": f"oreal {st['run']} round {r}"}
        st.update(pending=p, rng=rng)
        _save(a, st)  # the picks are fixed before anything reaches the server
    r, sel = p["round"], _selection(p)
    images = torch.from_numpy(exp.dataset.train.images).permute(0, 3, 1, 2).contiguous()
    tasks = ox.tasks(sel, exp.sp_map, images, num_superpixels=exp.S, per=a.per, round=r, outline=a.outline)
    config = ox.labeling_config(exp.dataset.classes, per=a.per, void=VOID)
    d = _write_round_files(exp, a, r, sel, tasks, config)
    if client is None:
        p.update(imported=True, project=None)
        _save(a, st)
        log(f"round {r}: {len(tasks)} tasks in {d / 'tasks.json'} (labeling config {d / 'config.xml'}); import "
            f"them into a Label Studio project, then `pull --export EXPORT.json`")
        return st
    if p["project"] is None:
        p["project"] = client.create_project(p["title"], config)["id"]
        _save(a, st)
    have = len(client.tasks(p["project"]))
    if have == 0:
        client.import_tasks(p["project"], tasks)
    elif have != len(tasks):
        raise StateError(f"project {p['project']} holds {have} tasks, expected 0 or {len(tasks)}; delete its "
                         f"tasks in Label Studio and run `push` again")
    p["imported"] = True
    _save(a, st)
    log(f"round {r}: project {p['project']} ({p['title']!r}) has {len(tasks)} tasks at "
        f"{client.url}/projects/{p['project']}/data")
    return st


def pull(exp, a, client, log=print):
    st = _load(exp, a)
    if st is None or st["pending"] is None or not st["pending"].get("imported"):
        raise StateError("nothing to pull: no round is pushed (run `push` first)")
    p = st["pending"]
    if a.export:
        export = a.export
    else:
        if p["project"] is None:
            raise StateError(f"round {p['round']} was written to files, not pushed to a server: pass "
                             f"--export EXPORT.json")
        pid = a.project if a.project is not None else p["project"]
        title = client.project(pid).get("title")
        if title != p["title"]:
            raise StateError(f"project {pid} is {title!r}, but this state waits for {p['title']!r}")
        export = client.export(pid)
    ans = ox.read_answers(export, _selection(p), exp.dataset.classes, num_images=len(exp.pool),
                          num_superpixels=exp.S, round=p["round"], void=VOID, labels=st["sp_labels"],
                          labeled=st["labeled"])
    st.update(sp_labels=ans.labels, labeled=ans.labeled, round=p["round"], pending=None,
              clicks=st["clicks"] + len(p["picks"][0]))
    st["picks"].append(p["picks"])
    st.setdefault("pulled", []).append({k: p[k] for k in ("round", "project", "title")})
    _save(a, st)
    log(f"round {p['round']}: {len(p['picks'][0])} answers added, {int(ans.labeled.sum())} superpixels labeled")
    return st


def answer_tasks(client, pid, answer):
    """Annotate every task of project ``pid`` not yet annotated, as an annotator in the UI would: per region,
    the pre-filled brush region and a ``class`` choice with the id of that region; ``answer(n, s)`` gives the
    choice (a class name or ``void``). Returns the number of tasks annotated."""
    done = 0
    for t in client.tasks(pid):
        if t.get("total_annotations"):
            continue  # resumable: answered already
        n, sps = t["data"][ox.KEY_IMAGE], t["data"][ox.KEY_SUPERPIXELS]
        regions = {r["id"]: r for p in client.predictions(t["id"]) for r in p["result"]}
        result = []
        for s in sps:
            rid = f"sp{s}"
            if rid in regions:
                result.append(dict(regions[rid], origin="prediction"))
            result.append({"id": rid, "type": "choices", "from_name": ox.CHOICE_NAME, "to_name": ox.IMAGE_NAME,
                           "value": {"choices": [answer(n, s)]}})
        client.annotate(t["id"], result)
        done += 1
    return done


def simulate(exp, a, client, log=print):
    """The simulated oracle (``examples/oracle.py``) answers the pushed round through the API (a demo)."""
    st = _load(exp, a)
    if st is None or st["pending"] is None or st["pending"].get("project") is None:
        raise StateError("nothing to simulate: no round is pushed to a server (run `push` first)")
    names, dom = exp.dataset.classes, exp.oracle.dominant
    done = answer_tasks(client, st["pending"]["project"],
                        lambda n, s: names[int(dom[n, s])] if dom[n, s] >= 0 else VOID)
    log(f"round {st['pending']['round']}: the oracle answered {done} tasks of project {st['pending']['project']}")


# ----------------------------------------------------------------------------------------------------------
# command line
def build_parser():
    from .al_loop import _limits, _pos, _size

    p = argparse.ArgumentParser(prog="python -m examples.label_studio", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("command", choices=["push", "pull", "next", "train", "simulate", "status"],
                   help="push: train + select + push a round; pull: read its answers; next: pull then push; "
                        "train: train on what is labeled (e.g. after the last round); simulate: the simulated "
                        "oracle answers the pushed tasks through the API (a demo without annotators)")
    p.add_argument("--out", default="runs/label_studio", help="state and per-round files")
    p.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://localhost:8080"))
    p.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                   help="API token (legacy or personal access token); default $LABEL_STUDIO_API_KEY")
    p.add_argument("--files-only", action="store_true", help="push: write tasks.json and config.xml, no server")
    p.add_argument("--export", help="pull: a Label Studio JSON export file instead of reading the project")
    p.add_argument("--project", type=int, help="pull: read this project id instead of the pushed one")
    p.add_argument("--restart", action="store_true",
                   help="discard OUT/state.pt and start a new run (projects on the server are left as they are)")
    g = p.add_argument_group("loop (fixed for a run: the state refuses other values)")
    g.add_argument("--data", choices=["synthetic", "camvid", "folder"], default="synthetic")
    g.add_argument("--root")
    g.add_argument("--size", type=_size, default=(48, 48))
    g.add_argument("--limits", type=_limits, default=(12, 4, 8), help="TRAIN,VAL,TEST images")
    g.add_argument("--sp-count", type=_pos, default=16)
    g.add_argument("--width", type=_pos, default=8)
    g.add_argument("--strategy", default="oreal:max")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--rounds", type=_pos, default=3)
    g.add_argument("--budget", type=_pos, default=6, help="superpixels per round")
    g.add_argument("--per", choices=["superpixel", "image"], default="superpixel",
                   help="one task per picked superpixel, or per image with all of its picks")
    g.add_argument("--outline", action="store_true", help="also draw the regions into the task images")
    g.add_argument("--max-epochs", type=_pos, default=3)
    g.add_argument("--patience", type=_pos, default=2)
    g.add_argument("--threads", type=_pos, default=2)
    return p


def main(argv=None, log=print):
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    lock = None
    try:
        exp = Experiment(_cfg(a), Path(a.out), progress=False, log=log)
        if a.command != "status" or a.restart:  # one writer per folder: two pushes would make two projects
            Path(a.out).mkdir(parents=True, exist_ok=True)
            lock = lock_folder(Path(a.out))
        if a.restart:
            (Path(a.out) / "state.pt").unlink(missing_ok=True)
        if a.command == "status":
            st = _load(exp, a)
            log(json.dumps(None if st is None else {k: st[k] for k in ("run", "round", "clicks", "pending",
                                                                         "history")}, indent=1))
            return 0
        offline = a.files_only or a.command == "train" or (a.command == "pull" and a.export)
        client = None if offline else LabelStudio(a.url, a.token)
        if a.command == "simulate":
            simulate(exp, a, client, log)
        if a.command in ("pull", "next"):
            pull(exp, a, client, log)
        if a.command in ("push", "next"):
            push(exp, a, client, log)
        if a.command == "train":
            st = _load(exp, a)
            if st is None:
                raise StateError(f"no state in {a.out}: run `push` first")
            if st["round"] < 0:
                raise StateError("no round has been pulled yet: nothing to train on (annotate the pushed round, "
                                 "then `pull`)")
            if st["trained_round"] == st["round"]:
                log(f"the model is already trained on round {st['round']}")
            _train(exp, st, a, log)
            _save(a, st)
    except (StateError, ServerError, ox.AnswerError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
