"""LoRA as openpi: its einsum substitution, the adapters' arithmetic against NumPy, exact equality with the base model
at init, the fold into the base weights (`--merge_lora`), and openpi's freeze filter."""

import dataclasses

import jax
import numpy as np
import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import lora
from apt_jax.models import pi0
from tests.models import apt_stages_test as apt

RNG = np.random.default_rng(0)
B, T, N, K, D, H, R = 2, 3, 4, 1, 8, 5, 3
ALPHA = 6.0  # α ≠ r: the einsum adapters are scaled by 2, the MLP's are not (openpi)

# (equation, weight shape, input shape): Gemma's attention einsums.
EINSUMS = {
    "q_einsum": ("BTD,NDH->BTNH", (N, D, H), (B, T, D)),
    "kv_einsum": ("BSD,2KDH->2BSKH", (2, K, D, H), (B, T, D)),
    "qkv_einsum": ("BSD,3KDH->3BSKH", (3, N, D, H), (B, T, D)),
    "attn_vec_einsum": ("BTNH,NHD->BTD", (N, H, D), (B, T, N, H)),
}


def _normal(*shape):
  return RNG.normal(size=shape).astype(np.float32)


def np_delta(name, a, b):
  """The weight LoRA adds, derived by hand: a per-head product for the projections in; for the output projection the
  first einsum sums x over heads, so every head's a meets the sum of b over heads."""
  if name == "attn_vec_einsum":
    return np.einsum("nhr,rd->nhd", a, b.sum(axis=0))
  return np.matmul(a, b)  # [..., D, r] @ [..., r, H] per leading (head) index


def test_equations_are_openpis_substitution():
  assert lora.einsum_equations("BTD,NDH->BTNH") == ("BTD,NDL->BTNL", "BTNL,NLH->BTNH")
  assert lora.einsum_equations("BSD,2KDH->2BSKH") == ("BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH")
  assert lora.einsum_equations("BTNH,NHD->BTD") == ("BTNH,NHL->BTL", "BTL,NLD->BTD")
  with pytest.raises(ValueError, match="rank label"):
    lora.einsum_equations("BLD,DH->BLH")


@pytest.mark.parametrize("name", sorted(EINSUMS))
def test_einsum_adapters_match_numpy(name):
  eqn, shape, x_shape = EINSUMS[name]
  w, x = _normal(*shape), _normal(*x_shape)
  a, b = _normal(*shape[:-1], R), _normal(*shape[:-2], R, shape[-1])
  module = lora.Einsum(shape, lora=lora.LoraConfig(R, ALPHA))
  got = module.apply({"params": {"w": w, "lora_a": a, "lora_b": b}}, eqn, x)
  letters = eqn.replace("2", "X").replace("3", "X")  # NumPy takes letters only
  want = np.einsum(letters, x, w + (ALPHA / R) * np_delta(name, a, b))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # ...and merge_params' own fold is that same weight.
  np.testing.assert_allclose(lora.einsum_delta(eqn, a, b, scaling=ALPHA / R), (ALPHA / R) * np_delta(name, a, b),
                             rtol=1e-6, atol=1e-6)


def test_mlp_adapters_are_unscaled_as_openpis():
  from apt_jax.models import gemma
  f = 6
  params = {"gating_einsum": _normal(2, D, f), "linear": _normal(f, D),
            "gating_einsum_lora_a": _normal(2, D, R), "gating_einsum_lora_b": _normal(2, R, f),
            "linear_lora_a": _normal(f, R), "linear_lora_b": _normal(R, D)}
  x = _normal(B, T, D)
  got = gemma.FeedForward(D, f, lora=lora.LoraConfig(R, ALPHA)).apply({"params": params}, x)
  g = params["gating_einsum"] + params["gating_einsum_lora_a"] @ params["gating_einsum_lora_b"]
  lin = params["linear"] + params["linear_lora_a"] @ params["linear_lora_b"]
  gelu = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
  np.testing.assert_allclose(got, (gelu(x @ g[0]) * (x @ g[1])) @ lin, rtol=1e-4, atol=1e-5)


def lora_config(vlm_rank=4, expert_rank=2, **kw):
  sizes = dict(apt.SIZES)
  sizes["paligemma_variant"] = dict(sizes["paligemma_variant"], lora_rank=vlm_rank, lora_alpha=2.0 * vlm_rank)
  sizes["action_expert_variant"] = dict(sizes["action_expert_variant"], lora_rank=expert_rank, lora_alpha=expert_rank)
  return pi0.Pi0Config(**{**sizes, **kw})


def _without_adapters(params):
  return tree_lib.unflatten({k: v for k, v in tree_lib.flatten(params).items() if not lora.is_lora_param(k)})


@pytest.fixture(scope="module")
def lora_model():
  return lora_config().create(jax.random.key(0))


def test_fresh_adapters_leave_the_base_model_exactly(lora_model):
  flat = tree_lib.flatten(lora_model.params)
  adapters = [k for k in flat if lora.is_lora_param(k)]
  assert len(adapters) == 2 * (3 + 2) * 2  # (q, kv, out + gating, linear) x (a, b) x 2 experts
  assert all(not np.any(flat[k]) for k in adapters if k.endswith("b")) and np.any(flat[adapters[0]])
  base = lora_model.config.without_lora().load(_without_adapters(lora_model.params))
  obs = apt.make_obs()
  for x, y in zip(apt.loss_and_actions(lora_model, obs), apt.loss_and_actions(base, obs)):
    np.testing.assert_array_equal(x, y)


def test_merged_params_are_the_folded_weights_and_the_same_model(lora_model):
  flat = {k: (np.asarray(v) + 0.05 * _normal(*v.shape) if lora.is_lora_param(k) else np.asarray(v))
          for k, v in tree_lib.flatten(lora_model.params).items()}
  model = lora_model.replace(params=tree_lib.unflatten(flat))
  c = model.config
  merged = tree_lib.flatten(lora.merge_params(model.params, [e.lora.scaling for e in c.gemma_experts]))
  assert set(merged) == {k for k in flat if not lora.is_lora_param(k)}
  llm = "PaliGemma/llm/layers/"
  for einsum, scaling in (("attn/q_einsum", 2.0), ("attn/kv_einsum_1", 1.0), ("attn/attn_vec_einsum", 2.0),
                          ("attn/attn_vec_einsum_1", 1.0)):
    name = einsum.split("/")[1].removesuffix("_1")
    a, b = flat[f"{llm}{einsum}/lora_a"], flat[f"{llm}{einsum}/lora_b"]
    want = flat[f"{llm}{einsum}/w"] + scaling * np.stack([np_delta(name, x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(merged[f"{llm}{einsum}/w"], want, rtol=1e-6, atol=1e-6, err_msg=einsum)
  for mlp in ("mlp", "mlp_1"):
    for w in ("gating_einsum", "linear"):
      want = flat[f"{llm}{mlp}/{w}"] + flat[f"{llm}{mlp}/{w}_lora_a"] @ flat[f"{llm}{mlp}/{w}_lora_b"]
      np.testing.assert_allclose(merged[f"{llm}{mlp}/{w}"], want, rtol=1e-6, atol=1e-6, err_msg=f"{mlp}/{w}")
  base = c.without_lora().load(tree_lib.unflatten(merged))
  obs = apt.make_obs()
  got = apt.loss_and_actions(model, obs)
  for x, y in zip(got, apt.loss_and_actions(base, obs)):
    np.testing.assert_allclose(x, y, atol=2e-5, rtol=2e-5)
  # The perturbed adapters matter: the same check against the fresh LoRA model would fail.
  assert np.abs(np.asarray(got[1]) - np.asarray(apt.loss_and_actions(lora_model, obs)[1])).max() > 1e-3


# openpi's pi0_test: frozen leaves of its freeze filter for VLM / expert LoRA (full size, shapes only).
FROZEN = {("gemma_2b", "gemma_300m"): 0, ("gemma_2b_lora", "gemma_300m"): 9, ("gemma_2b", "gemma_300m_lora"): 8,
          ("gemma_2b_lora", "gemma_300m_lora"): 17}


@pytest.mark.parametrize("variants", sorted(FROZEN))
def test_freeze_filter_freezes_openpis_leaves(variants):
  config = pi0.Pi0Config(paligemma_variant=variants[0], action_expert_variant=variants[1])
  keys = tree_lib.flatten(config.abstract_params())
  frozen = {k for k in keys if config.freeze_filter(k)}
  assert len(frozen) == FROZEN[variants]
  vlm_lora, expert_lora = (v.endswith("_lora") for v in variants)
  for k in keys:
    llm_vlm = k.startswith("PaliGemma/llm/") and "_1/" not in k and not k.endswith("_1/scale")
    llm_expert = k.startswith("PaliGemma/llm/") and not llm_vlm
    want = not lora.is_lora_param(k) and ((vlm_lora and llm_vlm) or (expert_lora and llm_expert))
    assert (k in frozen) == want, k


def test_stage2_with_vlm_lora_trains_the_adapters_and_not_the_vlm():
  """The paper's VLM fine-tuning through LoRA: the VLM (SigLIP too) frozen, its adapters get gradients, so the prefix
  runs in the same backward pass (no stop-gradient cache)."""
  config = lora_config(expert_rank=0, apt_stage="stage2")
  assert not config.vlm_trainable and not config.stop_vlm_gradient and not config.separate_prefix_pass
  model = config.create(jax.random.key(0))
  # SigLIP's head starts at zero (openpi), so fresh image tokens are 0 and the VLM's K/V with them: move it, so the
  # expert reads the VLM through the images (the fusion gates are still shut).
  flat = tree_lib.flatten(model.params)
  flat["PaliGemma/img/head/kernel"] = 0.1 * _normal(*flat["PaliGemma/img/head/kernel"].shape)
  model = model.replace(params=tree_lib.unflatten(flat))
  grads = apt._grads(model)
  for k in grads:
    if config.freeze_filter(k):
      assert not lora.is_lora_param(k) and (k.startswith("PaliGemma/img/") or "_1" not in k), k
  assert np.any(grads["PaliGemma/llm/layers/attn/q_einsum/lora_b"])
  assert config.freeze_filter("PaliGemma/img/embedding/kernel") and config.freeze_filter(
      "PaliGemma/llm/layers/attn/q_einsum/w")
  assert not config.freeze_filter("PaliGemma/llm/layers/attn/q_einsum_1/w")


def test_stage2_vlm_lora_initialises_from_stage1_with_new_adapters(lora_model):
  stage1 = pi0.Pi0Config(**{**apt.SIZES, "apt_stage": "stage1"})
  stage2 = lora_config(expert_rank=0, apt_stage="stage2")
  partial, restored, new = stage2.stage2_partial_params(stage1.abstract_params(), stage2.abstract_params())
  assert new and all("/fusion_1/" in k or lora.is_lora_param(k) for k in new)
  assert any(lora.is_lora_param(k) for k in new) and len(restored) == len(tree_lib.flatten(partial))


def test_stage1_rejects_vlm_lora():
  with pytest.raises(ValueError, match="lora_rank=4"):
    lora_config(apt_stage="stage1")


def test_lora_variants_are_openpis():
  from apt_jax.models import gemma
  assert gemma.get_config("gemma_2b_lora").lora == lora.LoraConfig(16, 16.0)
  assert gemma.get_config("gemma_300m_lora").lora == lora.LoraConfig(32, 32.0)
  assert dataclasses.replace(gemma.get_config("gemma_2b_lora"), lora_rank=0, lora_alpha=1.0) == gemma.get_config(
      "gemma_2b")
  with pytest.raises(ValueError, match="rank"):
    lora.LoraConfig(0, 1.0)
