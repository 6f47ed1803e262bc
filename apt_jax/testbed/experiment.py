"""Testbed v2 (docs/testbed_v2_protocol.md): per seed, a VLM pretrained and gated by linear probes, then the Table 2
recipes and controls on both data arms, evaluated closed-loop on every split; per-episode rows in results.jsonl,
checkpoints of every recipe in the standard layout, the pre-registered statistics and plots.

    from apt_jax.testbed import experiment
    experiment.run(config, "out/demo")          # config: experiments/testbed_demo.py or testbed_full.py

Outputs are written as they are produced; a rerun in the same workdir skips what is done (VLMs, Stage 1s, recipe
-seeds whose rows are in results.jsonl) and evaluates saved checkpoints that have no rows yet. With
`vla.vmap_seeds` the run is recipe-major: every seed's VLM, then each recipe's seeds trained together (vmapped).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import pathlib
import shutil
import time
from typing import Any

import ml_collections
import numpy as np

from apt_jax import checkpoints
from apt_jax import policy_config as _policy_config
from apt_jax import weight_loaders
from apt_jax.models import registry
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import language as L
from apt_jax.testbed import probes
from apt_jax.testbed import report
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla
from apt_jax.testbed import vlm_pretrain


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One row of the grid. stage1: None (one stage), "pool" (the seed's shared language-free Stage 1) or "task"
  (Stage 1 on the task demos, prompt dropped). fusion: the main run is Stage 2 (gated fusion) rather than one-stage
  training (from Stage 1 params if `stage1` is set). vlm: "frozen" or "tuned"; vlm_lr: its lr multiplier.
  ki: stop the expert's gradient into the VLM; cotrain: add the VL co-training loss. pool_first: one-stage run that
  spends `steps` extra batches on the pool (empty prompt) first, under one schedule (equal compute). head: the
  registered head the recipe trains; size: model kwargs over the config's (e.g. the APT expert's stage2_init)."""

  label: str
  head: str = "pi0"
  stage1: str | None = None
  fusion: bool = False
  vlm: str = "tuned"
  vlm_lr: float = 1.0
  ki: bool = False
  cotrain: bool = False
  pool_first: bool = False
  size: dict = dataclasses.field(default_factory=dict)


RECIPES = {
    "pi0_joint": Recipe("π0 joint (random expert, VLM tuned)"),
    "ki": Recipe("KI + VL co-training, one stage (π0.5-style)", vlm_lr=0.1, ki=True, cotrain=True),
    "apt_frozen": Recipe("APT 2-stage, frozen VLM", stage1="pool", fusion=True, vlm="frozen"),
    "ki_2stage": Recipe("APT KI + 2-stage", stage1="pool", fusion=True, vlm_lr=0.1, ki=True, cotrain=True),
    "apt_vlm_ft": Recipe("APT 2-stage + VLM fine-tuning", stage1="pool", fusion=True, vlm_lr=0.1),
    "ctrl_taskonly_s1": Recipe("control: KI + 2-stage, Stage 1 on task data only", stage1="task", fusion=True,
                               vlm_lr=0.1, ki=True, cotrain=True),
    "ctrl_s1_pi0": Recipe("control: Stage 1 -> π0 joint (no fusion)", stage1="pool"),
    "ctrl_pi0_equal_compute": Recipe("control: π0 joint + pool steps (equal compute)", pool_first=True),
    "abl_ki_sg_only": Recipe("ablation: KI = stop-gradient only, 2-stage", stage1="pool", fusion=True, vlm_lr=0.1,
                             ki=True),
    "abl_causal_mask": Recipe("ablation: APT frozen, images blind to the prompt", stage1="pool", fusion=True,
                              vlm="frozen", size=dict(stage2_prefix_mask="causal")),
    # Fig. 4: the GR00T-style and APT-expert heads, one stage vs Stage 1 -> 2, as π's pi0_joint / apt_frozen /
    # apt_vlm_ft (the paper's Fig. 4 compares 1- and 2-stage training per head; Table 2 has both VLM variants).
    "gr00t_joint": Recipe("GR00T-style joint (random head, VLM tuned)", head="gr00t"),
    "gr00t_2stage_frozen": Recipe("GR00T-style 2-stage, frozen VLM", head="gr00t", stage1="pool", fusion=True,
                                  vlm="frozen"),
    "gr00t_2stage_vlm_ft": Recipe("GR00T-style 2-stage + VLM fine-tuning", head="gr00t", stage1="pool", fusion=True,
                                  vlm_lr=0.1),
    "aptx_joint": Recipe("APT expert joint (random expert, VLM tuned)", head="apt_expert"),
    "aptx_2stage_frozen": Recipe("APT expert 2-stage (preserving init), frozen VLM", head="apt_expert",
                                 stage1="pool", fusion=True, vlm="frozen", size=dict(stage2_init="preserving")),
    "aptx_2stage_vlm_ft": Recipe("APT expert 2-stage (preserving init) + VLM fine-tuning", head="apt_expert",
                                 stage1="pool", fusion=True, vlm_lr=0.1, size=dict(stage2_init="preserving")),
    "aptx_paper_2stage_frozen": Recipe("APT expert 2-stage (paper init), frozen VLM", head="apt_expert",
                                       stage1="pool", fusion=True, vlm="frozen", size=dict(stage2_init="paper")),
    "aptx_paper_2stage_vlm_ft": Recipe("APT expert 2-stage (paper init) + VLM fine-tuning", head="apt_expert",
                                       stage1="pool", fusion=True, vlm_lr=0.1, size=dict(stage2_init="paper")),
}
PRIMARY = ("pi0_joint", "ki", "apt_frozen", "ki_2stage", "apt_vlm_ft")


def recipes_of(head: str) -> tuple[str, ...]:
  """The recipes that train `head`, in grid order."""
  return tuple(r for r, x in RECIPES.items() if x.head == head)


# The other heads' tiny sizes (their config fields, over `size`), chosen so that neither wins by capacity: expert
# params and train-step FLOPs near the π-style expert's (benchmarks/testbed_heads.py -> docs/testbed_v2_heads/
# cost.json). GR00T-style: a DiT of the π expert's width and depth (one cross-attention block to the last VLM layer,
# one self-attention block); N1.5's VL self-attention adapter is dropped (at the VLM's width it alone would double the
# head). APT expert: 4 layers (Stage 1 builds 2) at width 24, the paper's DDIM sampled with 20 steps.
HEAD_SIZE = dict(
    gr00t=dict(dit_variant=dict(num_heads=2, head_dim=16, depth=2, output_dim=32, state_hidden=32,
                                num_future_tokens=4, adapter_depth=0, adapter_num_heads=4, time_channels=64)),
    apt_expert=dict(expert_variant=dict(width=24, num_heads=2, depth=4), objective="ddim", flow_steps=20),
)


def base_config() -> ml_collections.ConfigDict:
  """The protocol's full-run values (docs/testbed_v2_protocol.md); experiments/testbed_*.py override them."""
  size = dict(vlm_width=64, expert_width=32, depth=2, num_heads=4, num_kv_heads=4, head_dim=16, siglip_width=32,
              siglip_depth=1, patch_size=16, action_horizon=8, max_token_len=16, flow_steps=10,
              stage2_prefix_mask="prefix_lm", fusion_gate="tanh_zero_proj")
  return ml_collections.ConfigDict(dict(
      head="pi0", size=size, head_size=HEAD_SIZE, arms=L.ARMS, seeds=(1, 2, 3, 4, 5),
      recipes=tuple(r for r in recipes_of("pi0") if r != "abl_causal_mask"),
      data=dict(episodes=600, episode_len=16, expert_noise=0.3, clean_labels=True, pool_factor=5),
      tokenizer=dict(vocab_size=256),
      # vlm.reuse_from: the workdir of an earlier run whose VLMs (per seed, gated there) this run reuses, so heads
      # are compared on the same VLMs (paired); "" trains them here.
      vlm=dict(reuse_from="", scenes=3000, qa_per_scene=8, eval_scenes=150, steps=1500, batch_size=48, lr=3e-3,
               warmup=0.1, end_lr_fraction=0.05, b2=0.95, clip=1.0, blend=0.1, point_weight=1.0, prefix_len=20,
               suffix_len=12, curriculum=corpus.CURRICULUM, probe_train_scenes=400, probe_eval_scenes=100,
               gate=dict(probe="image_tokens", object=0.75, container=0.75), attempts=3),
      # vla.vmap_seeds: train a recipe's seeds together, one step vmapped over them (recipe-major `run`, for a GPU
      # that one tiny seed leaves idle); False: seed-major, one seed at a time (the CPU protocol).
      vla=dict(steps=6000, batch_size=16, lr=2e-3, warmup=0.05, vl_cotrain_weight=1.0, vmap_seeds=False),
      eval=dict(episodes_per_split=40, max_steps=20, replan=4, flow_steps=10, sweep_flow_steps=(5, 20)),
      stats=dict(arm="shortcut", baseline="pi0_joint", recipes=("ki_2stage", "apt_vlm_ft"),
                 splits=("paraphrase", "unseen_object"), level=0.95, margin=0.10),
  ))


def _log(msg, logfile=None):
  line = f"[{time.strftime('%H:%M:%S')}] {msg}"
  print(line, flush=True)
  if logfile is not None:
    with open(logfile, "a") as f:
      f.write(line + "\n")


# --- Data -------------------------------------------------------------------------------------------------------


def episode_frames(cfg, episodes: L.Episodes, tokenizer, *, seed: int, render: bool, language: bool = True) -> dict:
  """Expert rollouts of `episodes` -> vla.EpisodeData frames (action chunks padded with the episode's last
  action). render=False keeps only the scene states and renders batches on the fly. language=False gives every
  episode the empty prompt (the language-free pool)."""
  d, ah = cfg.data, cfg.size.action_horizon
  imgs, states, acts, ok, scenes, _ = T.rollout_expert(
      episodes.state, d.episode_len, rng=np.random.default_rng([seed, 6]), noise=d.expert_noise,
      clean_labels=d.clean_labels, render_images=render)
  n_t, n_e = acts.shape[:2]
  idx = np.minimum(np.arange(n_t)[:, None] + np.arange(ah)[None], n_t - 1)            # [T, AH]
  chunks = np.transpose(acts[idx], (2, 0, 1, 3))                                       # [E, T, AH, 3]
  by_episode = lambda x: np.swapaxes(x, 0, 1).reshape(n_e * n_t, *x.shape[2:])        # [T, E, ...] -> [E * T, ...]
  tok = [tokenizer.tokenize(s if language else "") for s in episodes.instructions]
  frame_scenes = T.State.concat(scenes)                                                # [T * E], step-major
  order = (np.arange(n_e)[:, None] + n_e * np.arange(n_t)[None]).reshape(-1)          # episode-major
  return dict(images=by_episode(imgs) if render else None, scenes=frame_scenes.index(order),
              state=by_episode(states), actions=chunks.reshape(n_e * n_t, ah, 3), steps_per_episode=n_t,
              tokens=np.stack([t for t, _ in tok]), mask=np.stack([m for _, m in tok]),
              expert_success=float(ok.mean()))


def pool_episodes(num_episodes: int, seed: int) -> L.Episodes:
  """The Stage 1 pool: any pair of any kinds and containers, half random and half fixed layouts, environment 0."""
  scenes = []
  for i in range(num_episodes):
    rng = np.random.default_rng([seed, 20, i])
    pair = L.ALL_PAIRS[int(rng.integers(len(L.ALL_PAIRS)))]
    scenes.append(T.sample_scene(rng, pair, layout=T.LAYOUTS[i % 2], kinds=range(len(T.OBJECTS)),
                                 containers=range(len(T.CONTAINERS))))
  state = T.State.concat(scenes)
  pairs = [tuple(p) for p in T.target_pair(state)]
  return L.Episodes(state, pairs, [""] * num_episodes, -np.ones(num_episodes, int))


class VlBatches:
  """VL co-training batches from the VLM's own corpus (final curriculum mix, PaliGemma's prefix-LM format)."""

  def __init__(self, cfg, vlm_corpus, tokenizer, batch_size: int):
    images, qa, tasks = vlm_corpus
    self.images, self.scene = images, np.array([i for i, _, _ in qa])
    self.arrays = vlm_pretrain.encode_qa(tokenizer, qa, cfg.vlm.prefix_len, cfg.vlm.suffix_len)
    w = np.asarray(cfg.vlm.curriculum[-1][1], float)[tasks]
    self.p, self.batch_size = w / w.sum(), batch_size

  def batch(self, rng) -> dict:
    idx = rng.choice(len(self.p), size=self.batch_size, p=self.p)
    tokens, mask, ar, loss = (a[idx] for a in self.arrays)
    return dict(image=self.images[self.scene[idx]], tokens=tokens, input_mask=mask, ar=ar, loss_mask=loss)


# --- VLM ----------------------------------------------------------------------------------------------------------


def model_kw(cfg, vocab: int, *, apt_stage="none", recipe: Recipe | None = None) -> dict:
  """Model kwargs of `cfg.head` at the testbed's size for one stage of a recipe."""
  recipe = recipe or Recipe("", head=cfg.head)
  if recipe.head != cfg.head:
    raise ValueError(f"recipe {recipe.label!r} trains head {recipe.head!r}, but config.head = {cfg.head!r}")
  size = {**cfg.size.to_dict(), **cfg.head_size.to_dict().get(cfg.head, {}), **recipe.size}
  return vla.model_kwargs(size, head=cfg.head, apt_stage=apt_stage, vocab_size=vocab,
                          vlm_trainable=False if apt_stage == "stage1" else recipe.vlm == "tuned",
                          knowledge_insulation=recipe.ki,
                          vlm_lr_multiplier=None if apt_stage == "stage1" else recipe.vlm_lr)


def vlm_recipe(cfg) -> dict:
  """The VLM settings that determine a pretrained VLM (everything in `cfg.vlm` but the gate), as JSON reads them."""
  return json.loads(json.dumps({k: x for k, x in cfg.vlm.to_dict().items()
                                if k not in ("gate", "attempts", "reuse_from")}))


def gate_model_config(cfg, vocab: int):
  """The model whose VLM features the gate probes: the head's Stage 2 (frozen VLM), whose prefix every recipe's
  model reads (one-stage runs use the same prefix mask; Stage 1 reads the images without the prompt)."""
  return registry.create_config(cfg.head, **model_kw(cfg, vocab, apt_stage="stage2", recipe=Recipe(
      "gate", head=cfg.head, fusion=True, vlm="frozen")))


def _probe(cfg, params, mc, tokenizer, seed) -> dict:
  """Probe accuracy per split on the features `mc`'s head reads (info fields)."""
  v = cfg.vlm
  t = time.time()
  probe = probes.report(params, mc, tokenizer, train_scenes=v.probe_train_scenes, eval_scenes=v.probe_eval_scenes,
                        seed=seed)
  return dict(probe=probe, probe_s=round(time.time() - t, 1), probe_layers=list(probes.read_layers(mc)))


def _log_gate(cfg, info, name, log, vlm_seed):
  """Logs the probe table, then the gate (raises probes.VlmGateError)."""
  v = cfg.vlm
  log(f"{name}: probe accuracy (object / container) per split, layers {info.get('probe_layers')}:\n"
      + report.probe_table(info["probe"]))
  probes.check_gate(info["probe"], v.gate.to_dict(), vlm_seed=vlm_seed)
  log(f"{name}: PASSES the gate ({v.gate.probe} probe, seen split >= {v.gate.object} / {v.gate.container})")


def reuse_vlm(cfg, seed: int, workdir: pathlib.Path, log) -> dict:
  """The VLM that the run in `cfg.vlm.reuse_from` trained and gated for `seed` (its corpus, tokenizer and params),
  copied into this workdir and gated again on the features this run's head reads. -> as pretrain_vlm."""
  src = pathlib.Path(cfg.vlm.reuse_from) / "vlm" / f"s{seed}"
  if not (src / "vlm.json").exists():
    raise FileNotFoundError(f"config.vlm.reuse_from={cfg.vlm.reuse_from!r}: no gated VLM for seed {seed} "
                            f"({src / 'vlm.json'} is missing)")
  src_info = json.loads((src / "vlm.json").read_text())
  if src_info["recipe"] != vlm_recipe(cfg):
    diff = sorted(k for k in {**src_info["recipe"], **vlm_recipe(cfg)}
                  if src_info["recipe"].get(k) != vlm_recipe(cfg).get(k))
    raise ValueError(f"config.vlm.reuse_from: {src / 'vlm.json'} was trained with another VLM recipe (config.vlm "
                     f"keys {diff} differ)")
  out = workdir / "vlm" / f"s{seed}"
  out.mkdir(parents=True, exist_ok=True)
  npz = out / f"vlm_attempt{src_info['attempt']}.npz"
  for f in (npz.name, "tokenizer.model"):
    if not (out / f).exists():
      shutil.copyfile(src / f, out / f)
  tokenizer = _tokenizer.PaligemmaTokenizer(str(out / "tokenizer.model"), max_len=cfg.size.max_token_len)
  vocab = max(cfg.tokenizer.vocab_size, tokenizer.vocab_size)
  mc = gate_model_config(cfg, vocab)
  name = f"VLM seed {seed} (from {src})"
  info_path = out / "vlm.json"
  info = json.loads(info_path.read_text()) if info_path.exists() else None
  if info is None or info.get("probe_layers") != list(probes.read_layers(mc)):
    info = dict(src_info, reused_from=str(src), **_probe(cfg, weight_loaders.load_paligemma_npz(npz), mc, tokenizer,
                                                        seed))
    info_path.write_text(json.dumps(info, indent=1))
  _log_gate(cfg, info, name, log, vlm_seed=f"{seed} attempt {src_info['attempt']} (reused from {src})")
  return dict(npz=str(npz), tokenizer=tokenizer, tokenizer_path=str(out / "tokenizer.model"), vocab=vocab,
              corpus=corpus.generate(cfg.vlm.scenes, cfg.vlm.qa_per_scene, seed=seed), info=info)


def pretrain_vlm(cfg, seed: int, workdir: pathlib.Path, log) -> dict:
  """Corpus + tokenizer (from `seed`), then VLM attempts until one passes the probe gate: attempt a uses init and
  batch-order seed `seed + 1000 * a` on the same corpus, at most `vlm.attempts` (a tiny VLM's object grounding emerges
  on some inits and not others: docs/testbed_v2_protocol.md, Deviations). Finished attempts are reused on a rerun.
  -> dict of paths and results. Raises probes.VlmGateError, naming every attempt, when none passes.
  With `vlm.reuse_from`, the VLM of an earlier run instead (reuse_vlm)."""
  if cfg.vlm.reuse_from:
    return reuse_vlm(cfg, seed, workdir, log)
  out = workdir / "vlm" / f"s{seed}"
  out.mkdir(parents=True, exist_ok=True)
  v = cfg.vlm
  vlm_corpus = corpus.generate(v.scenes, v.qa_per_scene, seed=seed)
  tok_path = out / "tokenizer.model"
  if not tok_path.exists():
    _tokenizer.train_sentencepiece(corpus.all_sentences(vlm_corpus[1]) + [L.instruction(p) for p in L.ALL_PAIRS],
                                   str(out / "tokenizer"), vocab_size=cfg.tokenizer.vocab_size)
  tokenizer = _tokenizer.PaligemmaTokenizer(str(tok_path), max_len=cfg.size.max_token_len)
  vocab = max(cfg.tokenizer.vocab_size, tokenizer.vocab_size)
  mc = gate_model_config(cfg, vocab)
  failures = []
  recipe = vlm_recipe(cfg)   # an attempt is reused only if it was trained with it (an older recipe's is retrained)
  for attempt in range(v.attempts):
    init_seed = seed + 1000 * attempt
    info_path, npz = out / f"vlm_attempt{attempt}.json", out / f"vlm_attempt{attempt}.npz"
    name = f"VLM seed {seed} attempt {attempt} (init seed {init_seed})"
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    if info is not None and info.get("recipe") != recipe:
      log(f"{name}: {info_path} was trained with another VLM recipe: retraining")
      info = None
    if info is not None:
      log(f"{name}: reusing {npz}")
    else:
      log(f"{name}: {len(vlm_corpus[1])} QA on {v.scenes} scenes, {v.steps} steps x batch {v.batch_size}")
      res = vlm_pretrain.pretrain(mc, tokenizer, vlm_corpus, corpus.generate(v.eval_scenes, 4, seed=seed + 50_000),
                                  v.to_dict(), seed=init_seed, log=log)
      vlm_pretrain.save(npz, res.params)
      info = dict(seed=seed, attempt=attempt, init_seed=init_seed, recipe=recipe, eval_accuracy=res.eval_accuracy,
                  losses=res.losses, train_s=round(res.train_seconds, 1), **_probe(cfg, res.params, mc, tokenizer,
                                                                                   seed))
      info_path.write_text(json.dumps(info, indent=1))
    log(f"{name}: held-out exact match " + ", ".join(f"{k} {x:.2f}" for k, x in info["eval_accuracy"].items()))
    try:
      _log_gate(cfg, info, name, log, vlm_seed=f"{seed} attempt {attempt}")
    except probes.VlmGateError as e:
      failures.append(str(e).split(". The VLM")[0])
      log(f"{name}: {failures[-1]}")
      continue
    (out / "vlm.json").write_text(json.dumps(dict(info, failed_attempts=failures), indent=1))
    return dict(npz=str(npz), tokenizer=tokenizer, tokenizer_path=str(tok_path), vocab=vocab, corpus=vlm_corpus,
                info=info)
  raise probes.VlmGateError(
      f"VLM seed {seed}: none of {v.attempts} attempts passes the probe gate ({'; '.join(failures)}). The VLM cannot "
      "locate what the instruction names, so a recipe comparison on it would be meaningless: stopping before any VLA "
      "run. Check the VLM loss curves in the log, then retune the VLM recipe on the tuning seeds "
      "(docs/testbed_v2_protocol.md).")


# --- VLA recipes --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
  """One seed's VLA run: its log name, seed, model kwargs, batches, and init (`npz`: the VLM's PaliGemma npz;
  `init_params`: Stage 1 params, the Stage 2 init)."""

  name: str
  seed: int
  kw: dict
  data: Any
  npz: str = ""
  init_params: dict | None = None


def _train(cfg, jobs: list[Job], *, steps, cotrain=False, log) -> list[tuple]:
  """-> [(model config, params)] per job after `steps` steps of the config's VLA schedule (batches with a VL
  co-training sub-batch when `cotrain`). Jobs of one model config train together (seeds vmapped when several)."""
  v = cfg.vla
  groups = {}
  for i, job in enumerate(jobs):
    groups.setdefault(json.dumps(job.kw, sort_keys=True, default=str), []).append(i)
  out = [None] * len(jobs)
  for idx in groups.values():
    tcs = []
    for job in (jobs[i] for i in idx):
      tc = vla.train_config(job.kw, steps=steps, batch_size=v.batch_size, lr=v.lr, seed=job.seed, npz_path=job.npz,
                            name=job.name, warmup=v.warmup, vl_cotrain_weight=v.vl_cotrain_weight,
                            vl_text_len=cfg.vlm.prefix_len + cfg.vlm.suffix_len if cotrain else 0)
      tc.model.head = cfg.head
      tcs.append(tc)
    res = vla.train_vla_seeds(tcs, [jobs[i].data for i in idx], init_params=[jobs[i].init_params for i in idx],
                              log=log, log_every=max(1, steps // 6))
    for i, (params, info) in zip(idx, res):
      out[i] = (info["model_config"], params)
  return out


def save_policy(step_dir: pathlib.Path, mc, params, tokenizer_path: str) -> None:
  """Standard checkpoint layout: <step>/params (openpi) + <step>/assets (model config, tokenizer, policy config)."""
  checkpoints.save_params(step_dir / "params", params, force=True)
  checkpoints.write_assets(step_dir / "assets", model_config=mc, policy_config=_policy_config.PolicyConfig(
      env="tabletop", tokenizer_path=tokenizer_path, num_steps=mc.num_steps or 10,
      normalized=False))  # the testbed trains on the simulator's own units (no norm stats)


def load_policy(step_dir: pathlib.Path):
  mc = checkpoints.load_model_config(step_dir)
  return mc, checkpoints.restore_params(step_dir / "params", restore_type=np.ndarray)


class SeedRun:
  """One seed's training inputs: its VLM, the pool (language-free Stage 1 data) and its Stage 1 params."""

  def __init__(self, cfg, seed, workdir, vlm, log):
    self.cfg, self.seed, self.workdir, self.vlm, self.log = cfg, seed, workdir, vlm, log
    self.vl = VlBatches(cfg, vlm["corpus"], vlm["tokenizer"], cfg.vla.batch_size)
    d = cfg.data
    self._pool = None
    self.stage1_params = {}
    self.pool_size = d.pool_factor * d.episodes

  def pool_data(self, *, with_vl=False):
    if self._pool is None:
      eps = pool_episodes(self.pool_size, self.seed)
      self._pool = episode_frames(self.cfg, eps, self.vlm["tokenizer"], seed=self.seed + 1000, render=False,
                                  language=False)
      self.log(f"  pool s{self.seed}: {self.pool_size} language-free episodes (rendered on the fly), expert "
               f"success {self._pool['expert_success']:.3f}")
    return vla.EpisodeData(self._pool, self.cfg.vla.batch_size, [self.seed, 1], vl=self.vl if with_vl else None)


def stage1(runs: list[SeedRun], kind: str, task_frames=None, arm=None) -> list[dict]:
  """Each seed's Stage 1 params: "pool" (shared by every recipe and arm of the seed) or "task" (per arm; task_frames
  per seed); saved under the workdir and reused on a rerun, the missing ones trained together."""
  key = "pool" if kind == "pool" else f"task_{arm}"
  cfg = runs[0].cfg
  step_dir = lambda r: r.workdir / "stage1" / key / f"s{r.seed}" / "checkpoints" / str(cfg.vla.steps)
  todo = []
  for i, r in enumerate(runs):
    if key not in r.stage1_params:
      if (step_dir(r) / "params").exists():
        r.stage1_params[key] = load_policy(step_dir(r))[1]
      else:
        todo.append(i)
  if todo:
    jobs = [Job(f"stage1_{key}/s{runs[i].seed}", runs[i].seed,
                model_kw(cfg, runs[i].vlm["vocab"], apt_stage="stage1"),
                runs[i].pool_data() if kind == "pool" else vla.EpisodeData(task_frames[i], cfg.vla.batch_size,
                                                                           [runs[i].seed, 2]),
                npz=runs[i].vlm["npz"]) for i in todo]
    for i, (mc, params) in zip(todo, _train(cfg, jobs, steps=cfg.vla.steps, log=runs[0].log)):
      save_policy(step_dir(runs[i]), mc, params, runs[i].vlm["tokenizer_path"])
      runs[i].stage1_params[key] = params
  return [r.stage1_params[key] for r in runs]


def train_recipe(runs: list[SeedRun], arm: str, name: str, task_frames: list) -> list[tuple]:
  """Recipe `name` on `arm` for each seed (task_frames per seed), the seeds together. -> [(model config, params)]."""
  r, cfg = RECIPES[name], runs[0].cfg
  n = cfg.vla.steps
  inits = stage1(runs, r.stage1, task_frames, arm) if r.stage1 else [None] * len(runs)
  jobs = []
  for run_, frames, init in zip(runs, task_frames, inits):
    task = vla.EpisodeData(frames, cfg.vla.batch_size, [run_.seed, 3], vl=run_.vl if r.cotrain else None)
    kw = model_kw(cfg, run_.vlm["vocab"], apt_stage="stage2" if r.fusion else "none", recipe=r)
    label = f"{arm}/{name}/s{run_.seed}"
    if r.pool_first:
      jobs.append(Job(label, run_.seed, kw, vla.Concat(((run_.pool_data(with_vl=r.cotrain), n), (task, n))),
                      npz=run_.vlm["npz"]))
    else:
      jobs.append(Job(label, run_.seed, kw, task, npz="" if init else run_.vlm["npz"], init_params=init))
  return _train(cfg, jobs, steps=2 * n if r.pool_first else n, cotrain=r.cotrain, log=runs[0].log)


def train_or_load(runs: list[SeedRun], arm: str, name: str, task_frames: list) -> list[tuple]:
  """Each seed's saved checkpoint of recipe `name` on `arm`; the seeds without one are trained (together) and saved.
  -> [(model config, params)] per seed."""
  step_dirs = [r.workdir / arm / name / f"s{r.seed}" / "checkpoints" / str(r.cfg.vla.steps) for r in runs]
  out = [load_policy(d) if (d / "params").exists() else None for d in step_dirs]
  todo = [i for i, x in enumerate(out) if x is None]
  if todo:
    trained = train_recipe([runs[i] for i in todo], arm, name, [task_frames[i] for i in todo])
    for i, (mc, params) in zip(todo, trained):
      save_policy(step_dirs[i], mc, params, runs[i].vlm["tokenizer_path"])
      out[i] = (mc, params)
  return out


def evaluate(cfg, mc, params, sets: dict, *, seed: int, flow_steps: int) -> dict:
  """Closed-loop rollouts of every split at once -> {split: (success [n], grasp [n])}."""
  e = cfg.eval
  policy = vla.make_policy(mc, params, flow_steps=flow_steps)
  state = T.State.concat([s[0].state for s in sets.values()])
  tokens = np.concatenate([s[1] for s in sets.values()])
  masks = np.concatenate([s[2] for s in sets.values()])
  ok, grasp = vla.rollout(policy, state, tokens, masks, steps=e.max_steps, replan=e.replan, seed=seed,
                          chunk=len(tokens), return_grasp=True)
  out, lo = {}, 0
  for split, s in sets.items():
    n = len(s[0])
    out[split] = (ok[lo:lo + n], grasp[lo:lo + n])
    lo += n
  return out


def eval_sets(cfg, arm, seed, train: L.Episodes, tokenizer) -> dict:
  """{split: (Episodes, tokens [n, L], masks [n, L])} for one arm and seed."""
  sets = {}
  for split in L.SPLITS:
    eps = L.eval_episodes(arm, split, cfg.eval.episodes_per_split, seed, train)
    tok = [tokenizer.tokenize(s) for s in eps.instructions]
    sets[split] = (eps, np.stack([t for t, _ in tok]), np.stack([m for _, m in tok]))
  return sets


def episode_rows(head, arm, recipe, seed, flow_steps, results, sets) -> list[dict]:
  rows = []
  for split, (ok, grasp) in results.items():
    eps = sets[split][0]
    for i in range(len(ok)):
      rows.append(dict(head=head, arm=arm, recipe=recipe, seed=seed, split=split, episode=i, flow_steps=flow_steps,
                       success=bool(ok[i]), grasp=bool(grasp[i]), instruction=eps.instructions[i],
                       pair=list(eps.pairs[i])))
  return rows


def read_rows(path: pathlib.Path) -> list[dict]:
  """Episode rows of a results.jsonl (or the gzipped copy committed under docs/); [] if there is none yet."""
  if not path.exists():
    return []
  with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
    text = f.read()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- Main ---------------------------------------------------------------------------------------------------------


def _arm_data(cfg, arm, run_: SeedRun, rows_path, log) -> tuple:
  """-> ({(recipe, flow_steps)} with rows already in results.jsonl, the demos' frames, the eval sets) of one seed."""
  seed, tok = run_.seed, run_.vlm["tokenizer"]
  done = {(r["recipe"], r["flow_steps"]) for r in read_rows(rows_path) if (r["arm"], r["seed"]) == (arm, seed)}
  train = L.training_episodes(arm, cfg.data.episodes, seed)
  frames = episode_frames(cfg, train, tok, seed=seed, render=True)
  sets = eval_sets(cfg, arm, seed, train, tok)
  log(f"{arm} s{seed}: {len(train)} demos ({len(frames['state'])} frames), expert success "
      f"{frames['expert_success']:.3f}, e.g. {train.instructions[:2]}")
  return done, frames, sets


def run(cfg: ml_collections.ConfigDict, workdir, *, command: str = "") -> dict:
  """Runs (or resumes) the protocol in `workdir`; returns the summary written to results.json."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  log = functools.partial(_log, logfile=workdir / "log.txt")
  for r in cfg.recipes:
    if r not in RECIPES:
      raise ValueError(f"config.recipes: unknown recipe {r!r}; known: {sorted(RECIPES)}")
    if RECIPES[r].head != cfg.head:
      raise ValueError(f"config.recipes: recipe {r!r} trains head {RECIPES[r].head!r}, but config.head = "
                       f"{cfg.head!r}; recipes of this head: {list(recipes_of(cfg.head))}")
  (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=1))
  rows_path = workdir / "results.jsonl"
  t_start, timings = time.time(), {}
  log(f"testbed v2: arms {list(cfg.arms)}, seeds {list(cfg.seeds)}, recipes {list(cfg.recipes)}"
      + (" (seeds vmapped)" if cfg.vla.vmap_seeds else "") + f"; {command}")
  # Seed-major (each seed's VLM, then its recipes), or with vmap_seeds recipe-major: every seed's VLM first, then
  # each recipe trains all seeds that lack its checkpoint together, as one vmapped step.
  for seeds in [cfg.seeds] if cfg.vla.vmap_seeds else [(s,) for s in cfg.seeds]:
    runs = []
    for seed in seeds:
      t = time.time()
      try:
        vlm = pretrain_vlm(cfg, seed, workdir, log)   # raises VlmGateError: no comparison on a VLM that fails
      except probes.VlmGateError as e:
        e.seed = seed   # which seed: a caller running several together (gpu_fig4) drops it and runs the rest
        raise
      timings[f"vlm_s{seed}"] = round(time.time() - t, 1)
      runs.append(SeedRun(cfg, seed, workdir, vlm, log))
    for arm in cfg.arms:
      arm_data = [_arm_data(cfg, arm, r, rows_path, log) for r in runs]
      flow = (cfg.eval.flow_steps, *cfg.eval.sweep_flow_steps)
      for name in cfg.recipes:
        todo = [i for i, (done, _, _) in enumerate(arm_data) if not all((name, f) in done for f in flow)]
        if not todo:
          continue
        t = time.time()
        policies = train_or_load([runs[i] for i in todo], arm, name, [arm_data[i][1] for i in todo])
        t_train = time.time() - t   # with seeds vmapped, the time of all of them together
        for i, (mc, params) in zip(todo, policies):
          seed, (done, _, sets) = runs[i].seed, arm_data[i]
          for f in flow:
            if (name, f) in done:
              continue
            res = evaluate(cfg, mc, params, sets, seed=seed, flow_steps=f)
            with open(rows_path, "a") as fh:
              fh.writelines(json.dumps(row) + "\n" for row in episode_rows(cfg.head, arm, name, seed, f, res, sets))
            if f == cfg.eval.flow_steps:
              log(f"  {arm}/{name} s{seed}: success " + " ".join(f"{s} {np.mean(x[0]):.2f}" for s, x in res.items())
                  + " | grasp " + " ".join(f"{s} {np.mean(x[1]):.2f}" for s, x in res.items()))
          timings[f"{arm}/{name}/s{seed}"] = dict(train_s=round(t_train, 1), total_s=round(time.time() - t, 1))
  timings["total_s"] = round(time.time() - t_start, 1)
  summary = report.write(workdir, cfg, read_rows(rows_path), labels={r: RECIPES[r].label for r in cfg.recipes},
                         timings=timings, command=command)
  log("\n" + summary["markdown"])
  return summary
