"""The seen vs unseen instruction experiment: data, tokenizer, VLM pretraining, the Table 2 recipes x seeds,
closed-loop evaluation on every split, and the report (markdown + JSON + PNG).

    from apt_jax.testbed import experiment
    experiment.run(experiment.DEMO, "out/demo")
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import numpy as np

from apt_jax.data import normalize
from apt_jax.envs import tabletop as T
from apt_jax.models import pi0 as _pi0
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import language as L
from apt_jax.testbed import report
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
    # Ablation of the testbed's one departure from the exact-preservation design (SIZE["stage2_prefix_mask"]).
    "apt_frozen_causal": dict(two_stage=True, vlm_trainable=False, knowledge_insulation=False,
                              size=dict(stage2_prefix_mask="causal"),
                              label="APT S1→S2, frozen VLM, images blind to the prompt"),
}

# 4 query = 4 KV heads: with MQA (1 KV head of 16) the frozen VLM's values kept too little of an object's cell for
# the expert to read (linear probe, README). Stage 2 (README, Results): PaliGemma's prefix-LM mask, so the frozen
# VLM grounds the prompt in the image tokens ("causal" hid it from them: named-object grasps at chance), and the
# zero-projection tanh gate ("tanh" at α = 0 opened to 0.04 in 3000 steps: the language path stayed unused).
SIZE = dict(vlm_width=64, expert_width=32, depth=2, num_heads=4, num_kv_heads=4, head_dim=16, siglip_width=32,
            siglip_depth=1, patch_size=16, action_horizon=8, max_token_len=16, flow_steps=5,
            stage2_prefix_mask="prefix_lm", fusion_gate="tanh_zero_proj")

DEMO = dict(
    size=SIZE, seeds=(0,), recipes=tuple(RECIPES),
    data=dict(episodes=300, episode_len=16, expert_noise=0.3, layout="fixed", clean_labels=True),
    tokenizer=dict(vocab_size=256),
    vlm=dict(scenes=3000, qa_per_scene=8, eval_scenes=150, steps=2500, batch_size=48, lr=3e-3, prefix_len=20,
             suffix_len=12, curriculum=corpus.CURRICULUM),
    vla=dict(steps=8000, batch_size=16, lr=2e-3),
    eval=dict(episodes_per_split=48, max_steps=20, replan=4),
)


def _log(msg, logfile=None):
  line = f"[{time.strftime('%H:%M:%S')}] {msg}"
  print(line, flush=True)
  if logfile is not None:
    with open(logfile, "a") as f:
      f.write(line + "\n")


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
  n_t, n_e = acts.shape[:2]
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


def _model_kw(cfg, vocab, stage, recipe):
  r = RECIPES[recipe]
  if stage == "stage1":   # Stage 1 options are the same for every two-stage recipe (it is shared).
    return vla.model_kwargs(cfg["size"], apt_stage="stage1", vlm_trainable=False, vocab_size=vocab)
  return vla.model_kwargs({**cfg["size"], **r.get("size", {})}, apt_stage=stage, vlm_trainable=r["vlm_trainable"],
                          knowledge_insulation=r["knowledge_insulation"], vocab_size=vocab)


def run_recipe_seed(cfg, recipe, seed, arrays, npz, vocab, stage1_cache, log):
  """-> (model_config, params, info) after the recipe's full step budget."""
  v = cfg["vla"]
  steps = v["steps"]
  r = RECIPES[recipe]
  if not r["two_stage"]:
    c = vla.train_config(_model_kw(cfg, vocab, "none", recipe), steps=steps, batch_size=v["batch_size"],
                         lr=v["lr"], seed=seed, npz_path=npz, name=f"{recipe}/s{seed}")
    params, info = vla.train_vla(c, vla.ArrayData(arrays, v["batch_size"], seed), log=log)
    return info["model_config"], params, info
  s1_steps = steps // 2
  if seed not in stage1_cache:   # Stage 1 is the same for every two-stage recipe: train it once per seed.
    c = vla.train_config(_model_kw(cfg, vocab, "stage1", recipe), steps=s1_steps, batch_size=v["batch_size"],
                         lr=v["lr"], seed=seed, npz_path=npz, name=f"stage1/s{seed}")
    stage1_cache[seed] = vla.train_vla(c, vla.ArrayData(arrays, v["batch_size"], seed), log=log)
  s1_params, s1_info = stage1_cache[seed]
  c = vla.train_config(_model_kw(cfg, vocab, "stage2", recipe), steps=steps - s1_steps, batch_size=v["batch_size"],
                       lr=v["lr"], seed=seed, name=f"{recipe}/s{seed}")
  data = vla.ArrayData(arrays, v["batch_size"], seed)
  data.set_state({"count": s1_steps})   # Stage 2 continues the data stream.
  params, info = vla.train_vla(c, data, init_params=s1_params, log=log)
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


def run(cfg: dict, workdir, *, command: str = "") -> dict:
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  logfile = workdir / "log.txt"
  log = functools.partial(_log, logfile=logfile)
  t_start = time.time()
  timings = {}
  (workdir / "config.json").write_text(json.dumps(cfg, indent=1, default=list))

  # 1. VLM corpus + tokenizer (trained on the corpus and the VLA instructions).
  t = time.time()
  v = cfg["vlm"]
  vlm_train = corpus.generate(v["scenes"], v["qa_per_scene"], seed=0)
  vlm_eval = corpus.generate(v["eval_scenes"], 4, seed=1)
  vla_instr = [L.instruction(p) for p in L.ALL_PAIRS]
  tok_path = _tokenizer.train_sentencepiece(corpus.all_sentences(vlm_train[1]) + vla_instr,
                                            str(workdir / "tokenizer"), vocab_size=cfg["tokenizer"]["vocab_size"])
  tokenizer = _tokenizer.PaligemmaTokenizer(tok_path, max_len=cfg["size"]["max_token_len"])
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

  # 3. VLM pretraining -> big_vision npz.
  t = time.time()
  npz = workdir / "vlm_paligemma.npz"
  base_config = _pi0.Pi0Config(**vla.model_kwargs(cfg["size"], vocab_size=vocab))
  log(f"VLM pretraining: {v['steps']} steps x batch {v['batch_size']} (prefix-LM)")
  vlm = vlm_pretrain.pretrain(base_config, tokenizer, vlm_train, vlm_eval, steps=v["steps"],
                              batch_size=v["batch_size"], lr=v["lr"], seed=0, prefix_len=v["prefix_len"],
                              suffix_len=v["suffix_len"], curriculum=v.get("curriculum"), log=log)
  vlm_pretrain.save(npz, vlm.params)
  log(f"VLM held-out exact-match accuracy: " + ", ".join(f"{k} {x:.2f}" for k, x in vlm.eval_accuracy.items()))
  timings["vlm_s"] = time.time() - t

  # 4. Recipes x seeds, each evaluated closed-loop on every split.
  results = {r: {s: [] for s in L.SPLITS} for r in cfg["recipes"]}
  grasps = {r: {s: [] for s in L.SPLITS} for r in cfg["recipes"]}
  per_seed = {r: {} for r in cfg["recipes"]}
  train_info = {r: [] for r in cfg["recipes"]}
  t = time.time()
  for seed in cfg["seeds"]:
    sets = eval_sets(cfg, tokenizer, train_meta, seed)
    stage1_cache = {}
    for recipe in cfg["recipes"]:
      t1 = time.time()
      mc, params, info = run_recipe_seed(cfg, recipe, seed, arrays, str(npz), vocab, stage1_cache, log)
      t2 = time.time()
      ok, grasp = evaluate(cfg, mc, params, sets, seed)
      for split, x in ok.items():
        results[recipe][split] += x
        grasps[recipe][split] += grasp[split]
      per_seed[recipe][seed] = {s: float(np.mean(x)) for s, x in ok.items()}
      train_info[recipe].append(dict(seed=seed, train_s=round(t2 - t1, 1), eval_s=round(time.time() - t2, 1),
                                     losses=info["losses"]))
      log(f"  {recipe} seed {seed}: success " + " ".join(f"{s} {np.mean(x):.2f}" for s, x in ok.items())
          + " | target grasped " + " ".join(f"{s} {np.mean(x):.2f}" for s, x in grasp.items())
          + f"  (train {t2 - t1:.0f}s, eval {time.time() - t2:.0f}s)")
  timings["recipes_s"] = time.time() - t
  timings["total_s"] = time.time() - t_start

  summary = dict(command=command, config=cfg, vlm_eval_accuracy=vlm.eval_accuracy,
                 expert_success=train_meta["expert_success"], timings={k: round(x, 1) for k, x in timings.items()},
                 per_seed=per_seed, train=train_info, labels={r: RECIPES[r]["label"] for r in cfg["recipes"]})
  table = report.write(workdir, results, summary, grasps=grasps)
  log("\n" + table)
  log(f"timings: {summary['timings']}")
  return summary
