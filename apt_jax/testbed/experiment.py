"""The seen vs unseen instruction experiment: data, tokenizer, VLM pretraining, the Table 2 recipes x seeds,
closed-loop evaluation on every split, and the report (markdown + JSON + PNG).

    experiment.run(configs.load("experiments/testbed_demo.py"), "out/demo")   # the config: an argument

The config's blocks (see experiments/testbed_demo.py): size (the tiny π0), seeds, recipes (names in RECIPES), data,
tokenizer, vlm, vla, eval.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import ml_collections
import numpy as np

from apt_jax.data import normalize
from apt_jax.models import pi0 as _pi0
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import language as L
from apt_jax.testbed import report
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla
from apt_jax.testbed import vlm_pretrain

# Recipes (the paper's Table 2 grid, reference/paper.md §4). two_stage: Stage 1 (VA prior, frozen VLM, no language)
# for half the budget, then Stage 2 (gated fusion) for the other half; else one stage with the full budget.
RECIPES = {
    "pi0_joint": dict(two_stage=False, vlm_trainable=True, knowledge_insulation=False,
                      label="π0 joint (random expert, VLM tuned)"),
    "apt_frozen": dict(two_stage=True, vlm_trainable=False, knowledge_insulation=False,
                       label="APT S1→S2, frozen VLM"),
    "apt_vlm_ft": dict(two_stage=True, vlm_trainable=True, knowledge_insulation=False,
                       label="APT S1→S2, VLM fine-tuned"),
    "ki": dict(two_stage=False, vlm_trainable=True, knowledge_insulation=True, label="KI only (one stage)"),
    "ki_2stage": dict(two_stage=True, vlm_trainable=True, knowledge_insulation=True, label="KI + APT S1→S2"),
    # Ablation of the testbed's one departure from the exact-preservation design (size.stage2_prefix_mask).
    "apt_frozen_causal": dict(two_stage=True, vlm_trainable=False, knowledge_insulation=False,
                              size=dict(stage2_prefix_mask="causal"),
                              label="APT S1→S2, frozen VLM, images blind to the prompt"),
}

def _log(msg, logfile=None):
  line = f"[{time.strftime('%H:%M:%S')}] {msg}"
  print(line, flush=True)
  if logfile is not None:
    with open(logfile, "a") as f:
      f.write(line + "\n")


def _write_json(path: pathlib.Path, obj) -> None:
  """Atomically (write, then rename): a crash leaves the old file or none, never half of one."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj))
  tmp.replace(path)


# --- Data -------------------------------------------------------------------------------------------------------


def make_vla_data(cfg: dict, tokenizer, workdir: pathlib.Path):
  """Expert demonstrations of the training tasks (one template, training pairs) -> in-memory per-step samples with
  action chunks; norm stats (RunningStats) saved to <workdir>/norm_stats.json."""
  d, size = cfg["data"], cfg["size"]
  seeds, pairs, instr = L.training_tasks(d["episodes"], seed=0)
  state = L.scenes(seeds, pairs, layout=d["layout"])
  rng = np.random.default_rng(0)
  imgs, states, acts, ok, _ = T.rollout_expert(state, d["episode_len"], rng=rng, noise=d["expert_noise"],
                                               size=vla.IMAGE_SIZE, clean_labels=d["clean_labels"])
  ah = size["action_horizon"]
  n_t = len(acts)
  # Chunks: actions t..t+AH-1, padded with the last action at the end of the episode.
  idx = np.minimum(np.arange(n_t)[:, None] + np.arange(ah)[None], n_t - 1)       # [T, AH]
  chunks = acts[idx]                                                               # [T, AH, E, 3]
  tok = [tokenizer.tokenize(s) for s in instr]
  tokens, masks = np.stack([t for t, _ in tok]), np.stack([m for _, m in tok])
  arrays = dict(image=imgs.reshape(-1, *imgs.shape[2:]), state=states.reshape(-1, states.shape[-1]),
                actions=np.transpose(chunks, (0, 2, 1, 3)).reshape(-1, ah, 3),
                tokens=np.tile(tokens, (n_t, 1)), mask=np.tile(masks, (n_t, 1)))
  stats = {k: normalize.RunningStats() for k in ("state", "actions")}
  stats["state"].update(arrays["state"])
  stats["actions"].update(arrays["actions"].reshape(-1, 3))
  normalize.save(workdir / "norm_stats.json", {k: v.get_statistics() for k, v in stats.items()})
  return arrays, dict(seeds=seeds, pairs=pairs, instructions=instr, expert_success=float(ok.mean()))


# --- VLA recipes --------------------------------------------------------------------------------------------------


def recipe_model_kwargs(cfg, vocab: int, stage: str, recipe: str) -> dict:
  """Pi0Config kwargs of `recipe` at `stage` ("none", "stage1" or "stage2") for the config's size."""
  r = RECIPES[recipe]
  if stage == "stage1":   # Stage 1 options are the same for every two-stage recipe (it is shared).
    return vla.model_kwargs(cfg["size"], apt_stage="stage1", vlm_trainable=False, vocab_size=vocab)
  return vla.model_kwargs({**cfg["size"].to_dict(), **r.get("size", {})}, apt_stage=stage,
                          vlm_trainable=r["vlm_trainable"], knowledge_insulation=r["knowledge_insulation"],
                          vocab_size=vocab)


def run_recipe_seed(cfg, recipe, seed, arrays, npz, vocab, stage1_cache, log):
  """-> (model_config, params, info) after the recipe's full step budget."""
  v = cfg["vla"]
  steps = v["steps"]

  def train(stage, num_steps, name, *, npz_path="", init_params=None, data_count=0):
    c = vla.train_config(recipe_model_kwargs(cfg, vocab, stage, recipe), steps=num_steps,
                         batch_size=v["batch_size"], lr=v["lr"], seed=seed, npz_path=npz_path, name=name)
    data = vla.ArrayData(arrays, v["batch_size"], seed)
    data.set_state({"count": data_count})
    return vla.train_vla(c, data, init_params=init_params, log=log)

  if not RECIPES[recipe]["two_stage"]:
    params, info = train("none", steps, f"{recipe}/s{seed}", npz_path=npz)
    return info["model_config"], params, info
  s1_steps = steps // 2
  if seed not in stage1_cache:   # Stage 1 is the same for every two-stage recipe: train it once per seed.
    stage1_cache[seed] = train("stage1", s1_steps, f"stage1/s{seed}", npz_path=npz)
  s1_params, s1_info = stage1_cache[seed]
  # Stage 2 starts from Stage 1's params and continues its data stream.
  params, info = train("stage2", steps - s1_steps, f"{recipe}/s{seed}", init_params=s1_params, data_count=s1_steps)
  info["seconds"] += s1_info["seconds"]
  return info["model_config"], params, info


def eval_sets(cfg, tokenizer, train_meta, seed, splits=L.SPLITS):
  """-> {split: (scenes, tokens [B, L], masks [B, L], instructions)} for closed-loop evaluation."""
  e = cfg["eval"]
  sets = {}
  for split in splits:
    out = L.eval_tasks(split, e["episodes_per_split"], seed=seed, train_seeds=train_meta["seeds"],
                       train_pairs=train_meta["pairs"])
    seeds, pairs, instr = out[:3]
    state = L.scenes(seeds, pairs, out[3] if len(out) > 3 else None, layout=cfg["data"]["layout"])
    tok = [tokenizer.tokenize(s) for s in instr]
    sets[split] = (state, np.stack([t for t, _ in tok]), np.stack([m for _, m in tok]), instr)
  return sets


def evaluate(cfg, model_config, params, sets, seed) -> dict:
  e = cfg["eval"]
  policy = vla.make_policy(model_config, params, flow_steps=cfg["size"]["flow_steps"])
  state = T.State.concat([s[0] for s in sets.values()])
  tokens = np.concatenate([s[1] for s in sets.values()])
  masks = np.concatenate([s[2] for s in sets.values()])
  ok, grasp = vla.rollout(policy, state, tokens, masks, steps=e["max_steps"], replan=e["replan"], seed=seed,
                          chunk=len(tokens), return_grasp=True)
  out, out_grasp, lo = {}, {}, 0
  for split, s in sets.items():
    n = s[0].batch_size
    out[split] = [int(x) for x in ok[lo:lo + n]]
    out_grasp[split] = [int(x) for x in grasp[lo:lo + n]]
    lo += n
  return out, out_grasp


# --- Main ---------------------------------------------------------------------------------------------------------


def run(cfg: ml_collections.ConfigDict, workdir, *, command: str = "", resume: bool = False) -> dict:
  """Runs the experiment in `workdir` and writes the report. With `resume`, what a run of the same config already
  finished there is reused: the tokenizer, the VLM (vlm_paligemma.npz, vlm.json) and each recipe x seed
  (runs/<recipe>_s<seed>.json); everything is seeded, so the report is the one a fresh run writes."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  logfile = workdir / "log.txt"
  log = functools.partial(_log, logfile=logfile)
  t_start = time.time()
  timings = {}
  config_json = cfg.to_json_best_effort(indent=1)
  if resume and (workdir / "config.json").exists():
    if json.loads((workdir / "config.json").read_text()) != json.loads(config_json):
      raise ValueError(f"Cannot resume {workdir}: its config.json differs from this config (pass --overwrite)")
  (workdir / "config.json").write_text(config_json)
  done = lambda *paths: resume and all(p.exists() for p in paths)

  # 1. VLM corpus + tokenizer (trained on the corpus and the VLA instructions).
  t = time.time()
  v = cfg["vlm"]
  vlm_train = corpus.generate(v["scenes"], v["qa_per_scene"], seed=0)
  vlm_eval = corpus.generate(v["eval_scenes"], 4, seed=1)
  tok_path = workdir / "tokenizer.model"
  if not done(tok_path):
    vla_instr = [L.instruction(p) for p in L.ALL_PAIRS]
    _tokenizer.train_sentencepiece(corpus.all_sentences(vlm_train[1]) + vla_instr, str(tok_path.with_suffix("")),
                                   vocab_size=cfg["tokenizer"]["vocab_size"])
  tokenizer = _tokenizer.PaligemmaTokenizer(str(tok_path), max_len=cfg["size"]["max_token_len"])
  vocab = max(cfg["tokenizer"]["vocab_size"], tokenizer.vocab_size)
  log(f"corpus: {len(vlm_train[1])} QA on {v['scenes']} scenes; tokenizer vocab {tokenizer.vocab_size}; "
      f"e.g. {vlm_train[1][:3]}")
  timings["corpus_s"] = time.time() - t

  # 2. VLA demonstrations.
  t = time.time()
  arrays, train_meta = make_vla_data(cfg, tokenizer, workdir)
  log(f"VLA data: {cfg['data']['episodes']} expert episodes ({len(arrays['state'])} steps), expert success "
      f"{train_meta['expert_success']:.3f}, e.g. {train_meta['instructions'][:2]}")
  timings["vla_data_s"] = time.time() - t

  # 3. VLM pretraining -> big_vision npz; vlm.json, written last, marks it finished.
  t = time.time()
  npz, vlm_json = workdir / "vlm_paligemma.npz", workdir / "vlm.json"
  if done(npz, vlm_json):
    log(f"VLM: reusing {npz}")
  else:
    base_config = _pi0.Pi0Config(**vla.model_kwargs(cfg["size"], vocab_size=vocab))
    log(f"VLM pretraining: {v['steps']} steps x batch {v['batch_size']} (prefix-LM)")
    vlm = vlm_pretrain.pretrain(base_config, tokenizer, vlm_train, vlm_eval, steps=v["steps"],
                                batch_size=v["batch_size"], lr=v["lr"], seed=0, prefix_len=v["prefix_len"],
                                suffix_len=v["suffix_len"], curriculum=v.get("curriculum"), log=log)
    vlm_pretrain.save(npz, vlm.params)
    _write_json(vlm_json, {"eval_accuracy": vlm.eval_accuracy})
  vlm_accuracy = json.loads(vlm_json.read_text())["eval_accuracy"]
  log("VLM held-out exact-match accuracy: " + ", ".join(f"{k} {x:.2f}" for k, x in vlm_accuracy.items()))
  timings["vlm_s"] = time.time() - t

  # 4. Recipes x seeds, each evaluated closed-loop on every split; one JSON per finished run.
  results = {r: {s: [] for s in L.SPLITS} for r in cfg["recipes"]}
  grasps = {r: {s: [] for s in L.SPLITS} for r in cfg["recipes"]}
  per_seed = {r: {} for r in cfg["recipes"]}
  train_info = {r: [] for r in cfg["recipes"]}
  t = time.time()
  (workdir / "runs").mkdir(exist_ok=True)
  for seed in cfg["seeds"]:
    sets = eval_sets(cfg, tokenizer, train_meta, seed)
    stage1_cache = {}
    for recipe in cfg["recipes"]:
      run_json = workdir / "runs" / f"{recipe}_s{seed}.json"
      if not done(run_json):
        t1 = time.time()
        mc, params, info = run_recipe_seed(cfg, recipe, seed, arrays, str(npz), vocab, stage1_cache, log)
        t2 = time.time()
        ok, grasp = evaluate(cfg, mc, params, sets, seed)
        _write_json(run_json, dict(ok=ok, grasp=grasp, train=dict(
            seed=seed, train_s=round(t2 - t1, 1), eval_s=round(time.time() - t2, 1), losses=info["losses"])))
      r = json.loads(run_json.read_text())
      for split, x in r["ok"].items():
        results[recipe][split] += x
        grasps[recipe][split] += r["grasp"][split]
      per_seed[recipe][seed] = {s: float(np.mean(x)) for s, x in r["ok"].items()}
      train_info[recipe].append(r["train"])
      log(f"  {recipe} seed {seed}: success " + " ".join(f"{s} {np.mean(x):.2f}" for s, x in r["ok"].items())
          + " | target grasped " + " ".join(f"{s} {np.mean(x):.2f}" for s, x in r["grasp"].items())
          + f"  (train {r['train']['train_s']:.0f}s, eval {r['train']['eval_s']:.0f}s)")
  timings["recipes_s"] = time.time() - t
  timings["total_s"] = time.time() - t_start

  summary = dict(command=command, config=cfg.to_dict(), vlm_eval_accuracy=vlm_accuracy,
                 expert_success=train_meta["expert_success"], timings={k: round(x, 1) for k, x in timings.items()},
                 per_seed=per_seed, train=train_info, labels={r: RECIPES[r]["label"] for r in cfg["recipes"]})
  table = report.write(workdir, results, summary, grasps=grasps)
  log("\n" + table)
  log(f"timings: {summary['timings']}")
  return summary
