"""openpi's own JAX π0 timed as `benchmarks/vs_reference.py` times apt_jax: a worker that runs in an openpi venv.

Not run by the project's venv or tests. Setup (outside the repo; openpi at commit 15a9616, its pinned JAX stack):
  python3 -m venv /tmp/openpi_venv && /tmp/openpi_venv/bin/pip install "jax==0.5.3" "jaxlib==0.5.3" "flax==0.10.2" \
      augmax einops "jaxtyping==0.2.36" "beartype==0.19.0" "numpy==1.26.4" "ml_dtypes==0.4.1" \
      "orbax-checkpoint==0.11.13" "tensorstore==0.1.74" safetensors "chex==0.1.90" "ml_collections==1.0.0"
  git clone https://github.com/Physical-Intelligence/openpi /tmp/openpi   # its src/ is imported, never copied
  (or, from a bare snapshot: mkdir /tmp/openpi && git --git-dir=SNAPSHOT archive 15a9616 src | tar -x -C /tmp/openpi)
then `vs_reference.py --reference "/tmp/openpi_venv/bin/python benchmarks/openpi_reference.py /tmp/openpi/src"`.

Protocol (stdin/stdout, one JSON object per line): the first line gives the sizes, dtype, batch inputs (.npz),
sampling steps and the path of apt_jax's hlo_flops.py; the worker builds and compiles, answers {"compile_s": ...,
"flops": {"grad": ..., "sample": ...}} (matmul FLOPs of openpi's compiled programs), then each "grad" or "sample" line
runs that call once and answers {"s": seconds}, so the caller can interleave both implementations under the same
machine load. openpi's sizes are patched in as the parity fixture's were: its Gemma variants by name, SigLIP's
"So400m/14" size, the vocabulary. torch (imported by openpi's JAX model modules for its PyTorch port) is stubbed.
"""

import json
import sys
import time
import types


def _stub_torch():
  torch = types.ModuleType("torch")
  torch.Tensor = type("Tensor", (), {})
  torch.uint8, torch.float32 = "uint8", "float32"
  nn = types.ModuleType("torch.nn")
  nn.functional = types.ModuleType("torch.nn.functional")
  torch.nn = nn
  sys.modules.update({"torch": torch, "torch.nn": nn, "torch.nn.functional": nn.functional})
  pytorch_port = types.ModuleType("openpi.models_pytorch.pi0_pytorch")
  sys.modules["openpi.models_pytorch.pi0_pytorch"] = pytorch_port
  sys.modules["openpi.models_pytorch"] = types.ModuleType("openpi.models_pytorch")
  sys.modules["openpi.models_pytorch"].pi0_pytorch = pytorch_port


def _load_module(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("hlo_flops", path)
  module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(openpi_src):
  sys.path.insert(0, openpi_src)
  _stub_torch()
  spec = json.loads(sys.stdin.readline())

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from openpi.models import gemma
  from openpi.models import model
  from openpi.models import pi0_config
  from openpi.models import siglip
  from openpi.shared import array_typing as at

  sizes = spec["sizes"]
  variants = {"ref_vlm": sizes["paligemma_variant"], "ref_expert": sizes["action_expert_variant"]}
  get_config = gemma.get_config
  gemma.get_config = lambda v: gemma.Config(**variants[v]) if v in variants else get_config(v)
  gemma.PALIGEMMA_VOCAB_SIZE = sizes["vocab_size"]
  decode = siglip.decode_variant
  siglip.decode_variant = lambda v: {**sizes["siglip_variant"], "patch_size": (14, 14)} if v == "So400m/14" \
      else decode(v)

  config = pi0_config.Pi0Config(dtype=spec["dtype"], paligemma_variant="ref_vlm", action_expert_variant="ref_expert")
  graphdef, state = nnx.split(config.create(jax.random.key(0)))
  with np.load(spec["inputs"]) as f:
    x = {k: jnp.asarray(f[k]) for k in f.files}
  obs = model.Observation(images={k[len("image/"):]: v for k, v in x.items() if k.startswith("image/")},
                          image_masks={k[len("image_mask/"):]: v for k, v in x.items() if k.startswith("image_mask/")},
                          state=x["state"], tokenized_prompt=x["tokenized_prompt"],
                          tokenized_prompt_mask=x["tokenized_prompt_mask"])

  def grad(state, rng, obs, actions):
    loss = lambda m: jnp.mean(m.compute_loss(rng, obs, actions, train=True))
    return nnx.value_and_grad(loss)(nnx.merge(graphdef, state))

  def sample(state, rng, obs):
    return nnx.merge(graphdef, state).sample_actions(rng, obs, num_steps=spec["num_steps"])

  hlo_flops = _load_module(spec["hlo_flops_path"])  # apt_jax/tools/hlo_flops.py: standard library only
  calls, flops, t = {}, {}, time.perf_counter()
  for name, fn, args, trips in (("grad", grad, (state, jax.random.key(1), obs, x["actions"]), 1),
                                ("sample", sample, (state, jax.random.key(2), obs), spec["num_steps"])):
    with at.disable_typechecking():  # lowering rebuilds the typechecked Observation from placeholder avals
      compiled = jax.jit(fn).lower(*args).compile()
    calls[name] = (compiled, args)
    flops[name] = hlo_flops.count(compiled.as_text(), default_trip_count=trips).flops
    jax.block_until_ready(compiled(*args))  # warm-up
  print(json.dumps({"compile_s": time.perf_counter() - t, "jax": jax.__version__, "flops": flops}), flush=True)
  for line in sys.stdin:
    fn, args = calls[line.strip()]
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    print(json.dumps({"s": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
