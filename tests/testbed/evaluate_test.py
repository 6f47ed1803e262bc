"""The instruction-file evaluator: template parsing with errors naming file and line, slot filling by hand, and an
end-to-end run on a saved policy in the standard checkpoint layout."""

import jax
import numpy as np
import pytest

from apt_jax import envs as _envs
from apt_jax import policy as _policy
from apt_jax.models import registry
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import evaluate as ev
from apt_jax.testbed import experiment as E
from apt_jax.testbed import language as L
from apt_jax.testbed import vla

SIZE = dict(vlm_width=16, expert_width=16, depth=1, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16,
            siglip_depth=1, patch_size=16, action_horizon=4, max_token_len=12)


def test_templates_parse_and_fill(tmp_path):
  f = tmp_path / "t.txt"
  f.write_text("# my phrasings\nput the {object} in the {container}\n\nkindly drop the {object} into the {container}\n")
  templates = ev.read_templates(f)
  assert templates == ["put the {object} in the {container}", "kindly drop the {object} into the {container}"]
  assert ev.fill(templates[1], (8, 3)) == "kindly drop the purple block into the basket"
  assert ev.fill(templates[0], (1, 0)) == L.instruction((1, 0))           # the training template, as trained
  for bad, msg in (("put the {object} away", "exactly the slots"), ("put {obj} in {container}", "exactly the slots"),
                   ("put the {object in {container}", "malformed")):
    f.write_text(f"ok {{object}} {{container}}\n{bad}\n")
    with pytest.raises(ValueError, match=f"t.txt:2: .*{msg}"):
      ev.read_templates(f)


def test_evaluates_saved_policies_per_template(tmp_path):
  cfg = E.base_config()
  cfg.data.episodes = 10
  cfg.eval.update(episodes_per_split=3, max_steps=4)
  (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
  vlm_corpus = corpus.generate(40, 4, seed=0)
  tok = _tokenizer.train_sentencepiece(corpus.all_sentences(vlm_corpus[1]), str(tmp_path / "tok"), vocab_size=256)
  mc = registry.create_config("pi0", **vla.model_kwargs(SIZE, vocab_size=256))
  for recipe in ("pi0_joint", "ki_2stage"):
    E.save_policy(tmp_path / "shortcut" / recipe / "s1" / "checkpoints" / "7", mc, mc.create(jax.random.key(0)).params,
                  tok)
  found = ev.saved_policies(tmp_path)
  assert [(a, r, s, p.name) for a, r, s, p in found] == [("shortcut", "ki_2stage", 1, "7"),
                                                          ("shortcut", "pi0_joint", 1, "7")]
  f = tmp_path / "mine.txt"
  f.write_text("put the {object} in the {container}\ngrab the {object}, then the {container}\n")
  result = ev.evaluate(tmp_path, ev.read_templates(f), split="unseen_object", recipes=["pi0_joint"], log=lambda m: None)
  assert set(result["table"]) == set(ev.read_templates(f))
  rows = result["rows"]
  assert len(rows) == 2 * 3 and {r["recipe"] for r in rows} == {"pi0_joint"}
  assert any(r["instruction"].startswith("grab the purple") for r in rows)     # the split's targets, filled in
  cell = result["table"]["put the {object} in the {container}"]["shortcut/pi0_joint"]
  assert cell["n"] == 3 and 0 <= cell["k"] <= 3
  assert "grab the {object}, then the {container}" in ev.markdown(result)
  with pytest.raises(FileNotFoundError, match="not a testbed workdir"):
    ev.evaluate(tmp_path / "nope", ["{object} {container}"])
  # The saved policy serves as it is (apt_jax.serve's path: model config, tokenizer and env from its assets).
  pol = _policy.create_trained_policy(found[1][3])
  out = pol.infer(_envs.get_env("tabletop").example(np.random.default_rng(0)))
  assert out["actions"].shape == (SIZE["action_horizon"], 3) and np.isfinite(out["actions"]).all()
