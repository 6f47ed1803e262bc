r"""Debug recipe for π0.5: experiments/debug.py's tiny sizes as π0.5 on the shipped LIBERO-spec sample, on CPU.

  python -m apt_jax.train --config experiments/debug_pi05.py:joint --workdir /tmp/debug_pi05
  python -m apt_jax.train --config experiments/debug_pi05.py:stage1 --workdir /tmp/debug_pi05_s1
  python -m apt_jax.train --config experiments/debug_pi05.py:stage2 --workdir /tmp/debug_pi05_s2 \
      --config.init_from=/tmp/debug_pi05_s1

π0.5's data path: quantile normalization and the normalized state discretized into the prompt ("Task: ..., State:
...;\nAction: "; the sample's 256-piece tokenizer has no digits, so the bins become unknown tokens here). Unlike
openpi's π0.5 LIBERO config the actions stay deltas (the sample's norm stats are those of delta actions).
Expected: the loss falls within 300 steps; Stage 2 starts where Stage 1 ended (tests/heads/debug_train_test.py, slow).
"""

from apt_jax import configs


def get_config(arg=None):
  arg = arg or "stage1"
  c = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", arg)
  c.name = f"debug_pi05_{arg}"
  c.model.kwargs.update(dict(pi05=True, discrete_state_input=True, max_token_len=64))
  c.data.use_quantile_norm = True
  return c
