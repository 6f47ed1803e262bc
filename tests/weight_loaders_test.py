"""PaliGemma npz loading, openpi-format params checkpoints, and their key/shape checks."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from apt_jax import checkpoints
from apt_jax import tree as tree_lib
from apt_jax import weight_loaders
from apt_jax.models import gemma
from apt_jax.models import siglip

VLM = gemma.Config(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=8)
EXPERT = gemma.Config(width=16, depth=2, mlp_dim=32, num_heads=4, num_kv_heads=1, head_dim=8)
IMG = siglip.Config(width=16, depth=2, mlp_dim=32, num_heads=2)
VOCAB = 24


def _flat(tree, prefix=""):
  """Plain recursive "/"-flattening (independent of apt_jax.tree)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def _is_expert_key(key):
  return any(part.endswith("_1") for part in key.split("/")[2:]) and key.startswith("PaliGemma/llm/")


@pytest.fixture(scope="module")
def pi0_like_params():
  """{"PaliGemma": {"img", "llm"}, "action_in_proj"}: shapes from the modules' inits, random float32 values."""
  img = siglip.Module(IMG, num_classes=VLM.width)
  llm = gemma.Module(configs=[VLM, EXPERT], embed_dtype="float32", vocab_size=VOCAB)

  def llm_init(module, tokens, suffix, positions, mask):
    return module([module.embed(tokens), suffix], positions=positions, mask=mask)

  img_shapes = jax.eval_shape(lambda: img.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3))))["params"]
  llm_shapes = jax.eval_shape(lambda: llm.init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 1, EXPERT.width)),
      jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3, 3), bool), method=llm_init))["params"]
  rng = np.random.default_rng(0)
  shapes = {"PaliGemma": {"img": img_shapes, "llm": llm_shapes},
            "action_in_proj": {"kernel": jax.ShapeDtypeStruct((8, EXPERT.width), jnp.float32),
                               "bias": jax.ShapeDtypeStruct((EXPERT.width,), jnp.float32)}}
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _write_big_vision_npz(path, params, *, seed=1, drop=(), extra=None, reshape=None):
  """A PaliGemma npz as big_vision writes it: flat `params/img/...`, `params/llm/...` keys, VLM only, plain np.savez."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, value in _flat(params["PaliGemma"], "params/").items():
    if any(part.endswith("_1") for part in key.split("/")[2:]) and key.startswith("params/llm/"):
      continue  # Action-expert weights are not part of PaliGemma.
    flat[key] = rng.normal(size=value.shape).astype(np.float32)
  for key in drop:
    del flat[key]
  for key, shape in (reshape or {}).items():
    flat[key] = np.zeros(shape, np.float32)
  flat.update(extra or {})
  np.savez(path, **flat)
  return flat


def test_paligemma_npz_loads_into_pi0_tree(tmp_path, pi0_like_params):
  path = tmp_path / "pt_224.npz"
  written = _write_big_vision_npz(path, pi0_like_params)
  assert any(k.startswith("params/img/") for k in written) and any(k.startswith("params/llm/") for k in written)

  loaded = weight_loaders.PaliGemmaWeightLoader(str(path)).load(pi0_like_params)
  got, before = _flat(loaded), _flat(pi0_like_params)
  assert got.keys() == before.keys()
  n_from_npz = 0
  for key, value in got.items():
    assert value.dtype == np.float32, key
    npz_key = "params/" + key[len("PaliGemma/"):]
    if npz_key in written:
      np.testing.assert_array_equal(value, written[npz_key], err_msg=key)
      n_from_npz += 1
    else:  # Expert `_1` keys and projections keep their values.
      assert _is_expert_key(key) or not key.startswith("PaliGemma/"), key
      np.testing.assert_array_equal(value, before[key], err_msg=key)
  assert n_from_npz == len(written)
  assert got["PaliGemma/llm/layers/attn/q_einsum_1/w"].shape == (2, 4, 16, 8)


def test_paligemma_npz_round_trip_is_exact(tmp_path, pi0_like_params):
  vlm = {"img": pi0_like_params["PaliGemma"]["img"],
         "llm": tree_lib.unflatten({k: v for k, v in _flat(pi0_like_params["PaliGemma"]["llm"]).items()
                                    if not any(p.endswith("_1") for p in k.split("/"))})}
  path = tmp_path / "vlm.npz"
  weight_loaders.save_paligemma_npz(path, vlm)
  with np.load(path) as f:  # big_vision layout on disk.
    assert set(f.files) == {"params/" + k for k in _flat(vlm)}
  back = _flat(weight_loaders.load_paligemma_npz(path))
  want = _flat(vlm)
  assert back.keys() == want.keys()
  for key in want:
    assert back[key].dtype == want[key].dtype
    np.testing.assert_array_equal(back[key], want[key], err_msg=key)


def test_save_paligemma_npz_refuses_expert_keys(tmp_path, pi0_like_params):
  with pytest.raises(ValueError, match=r"expert keys \['params/llm/[^']*_1/"):
    weight_loaders.save_paligemma_npz(tmp_path / "x.npz", pi0_like_params["PaliGemma"])


def test_paligemma_npz_missing_key_raises_naming_it(tmp_path, pi0_like_params):
  path = tmp_path / "missing.npz"
  _write_big_vision_npz(path, pi0_like_params, drop=["params/llm/final_norm/scale"])
  with pytest.raises(tree_lib.TreeMismatchError, match="PaliGemma/llm/final_norm/scale"):
    weight_loaders.PaliGemmaWeightLoader(str(path)).load(pi0_like_params)


def test_paligemma_npz_extra_key_raises_naming_it(tmp_path, pi0_like_params):
  path = tmp_path / "extra.npz"
  _write_big_vision_npz(path, pi0_like_params, extra={"params/llm/layers/attn/k_norm/scale": np.zeros((2, 8))})
  with pytest.raises(tree_lib.TreeMismatchError, match="PaliGemma/llm/layers/attn/k_norm/scale"):
    weight_loaders.PaliGemmaWeightLoader(str(path)).load(pi0_like_params)


def test_paligemma_npz_misshaped_key_raises_naming_key_and_shapes(tmp_path, pi0_like_params):
  path = tmp_path / "shape.npz"
  _write_big_vision_npz(path, pi0_like_params, reshape={"params/img/head/kernel": (16, 2048)})
  with pytest.raises(tree_lib.TreeMismatchError) as err:
    weight_loaders.PaliGemmaWeightLoader(str(path)).load(pi0_like_params)
  msg = str(err.value)
  assert "PaliGemma/img/head/kernel" in msg
  assert "(16, 2048)" in msg and "(16, 32)" in msg


def test_paligemma_npz_outside_big_vision_layout_raises(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, **{"img/head/kernel": np.zeros((2, 2))})
  with pytest.raises(tree_lib.TreeMismatchError, match="img/head/kernel"):
    weight_loaders.load_paligemma_npz(path)
  with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
    weight_loaders.load_paligemma_npz(tmp_path / "nowhere.npz")


def test_checkpoint_loader_checks_extra_and_misshaped_keys(tmp_path, pi0_like_params):
  small = {"action_in_proj": pi0_like_params["action_in_proj"]}
  extra = {"action_in_proj": dict(small["action_in_proj"], scale=np.ones((16,), np.float32))}
  checkpoints.save_params(tmp_path / "extra", extra)
  with pytest.raises(tree_lib.TreeMismatchError, match="action_in_proj/scale"):
    weight_loaders.CheckpointWeightLoader(str(tmp_path / "extra")).load(pi0_like_params)

  bad = {"action_in_proj": {"kernel": np.zeros((9, 16), np.float32)}}
  checkpoints.save_params(tmp_path / "bad", bad)
  with pytest.raises(tree_lib.TreeMismatchError, match=r"action_in_proj/kernel.*\(9, 16\).*\(8, 16\)"):
    weight_loaders.CheckpointWeightLoader(str(tmp_path / "bad")).load(pi0_like_params)


# ----------------------------------------------------------------------------------------------------------------------
# openpi-format params checkpoints.


def _openpi_tiny_shapes(cfg):
  """The 50 keys of reference/openpi.md §2 at the fixture's sizes (config.json)."""
  s, v, e = cfg["tiny_patches"]["siglip"], cfg["gemma_configs"]["tiny_vlm"], cfg["gemma_configs"]["tiny_expert"]
  vocab, ad = cfg["vocab_size"], cfg["pi0_config"]["action_dim"]
  w, d, f, nh = s["width"], s["depth"], s["mlp_dim"], s["num_heads"]
  tokens = (224 // s["patch_size"][0]) * (224 // s["patch_size"][1])
  enc = "PaliGemma/img/Transformer/encoderblock/"
  mha = enc + "MultiHeadDotProductAttention_0/"
  shapes = {
      "PaliGemma/img/embedding/kernel": (*s["patch_size"], 3, w), "PaliGemma/img/embedding/bias": (w,),
      "PaliGemma/img/pos_embedding": (1, tokens, w),
      enc + "LayerNorm_0/scale": (d, w), enc + "LayerNorm_0/bias": (d, w),
      enc + "LayerNorm_1/scale": (d, w), enc + "LayerNorm_1/bias": (d, w),
      enc + "MlpBlock_0/Dense_0/kernel": (d, w, f), enc + "MlpBlock_0/Dense_0/bias": (d, f),
      enc + "MlpBlock_0/Dense_1/kernel": (d, f, w), enc + "MlpBlock_0/Dense_1/bias": (d, w),
      mha + "out/kernel": (d, nh, w // nh, w), mha + "out/bias": (d, w),
      "PaliGemma/img/Transformer/encoder_norm/scale": (w,), "PaliGemma/img/Transformer/encoder_norm/bias": (w,),
      "PaliGemma/img/head/kernel": (w, v["width"]), "PaliGemma/img/head/bias": (v["width"],),
      "PaliGemma/llm/embedder/input_embedding": (vocab, v["width"]),
  }
  for n in ("query", "key", "value"):
    shapes[mha + f"{n}/kernel"] = (d, w, nh, w // nh)
    shapes[mha + f"{n}/bias"] = (d, nh, w // nh)
  for sfx, c in (("", v), ("_1", e)):
    L, D, H = c["depth"], c["width"], c["head_dim"]
    shapes.update({
        f"PaliGemma/llm/layers/attn/q_einsum{sfx}/w": (L, c["num_heads"], D, H),
        f"PaliGemma/llm/layers/attn/kv_einsum{sfx}/w": (L, 2, c["num_kv_heads"], D, H),
        f"PaliGemma/llm/layers/attn/attn_vec_einsum{sfx}/w": (L, c["num_heads"], H, D),
        f"PaliGemma/llm/layers/mlp{sfx}/gating_einsum": (L, 2, D, c["mlp_dim"]),
        f"PaliGemma/llm/layers/mlp{sfx}/linear": (L, c["mlp_dim"], D),
        f"PaliGemma/llm/layers/pre_attention_norm{sfx}/scale": (L, D),
        f"PaliGemma/llm/layers/pre_ffw_norm{sfx}/scale": (L, D),
        f"PaliGemma/llm/final_norm{sfx}/scale": (D,),
    })
  we = e["width"]
  projections = {"state_proj": (ad, we), "action_in_proj": (ad, we), "action_time_mlp_in": (2 * we, we),
                 "action_time_mlp_out": (we, we), "action_out_proj": (we, ad)}
  for name, (fan_in, fan_out) in projections.items():
    shapes[f"{name}/kernel"] = (fan_in, fan_out)
    shapes[f"{name}/bias"] = (fan_out,)
  return shapes


def test_restore_openpi_fixture_params(openpi_fixture_dir):
  cfg = json.loads((openpi_fixture_dir / "config.json").read_text())
  params = checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params")
  got = {k: tuple(v.shape) for k, v in _flat(params).items()}
  want = _openpi_tiny_shapes(cfg)
  assert len(want) == 50
  assert got == want
  assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert sum(int(np.prod(s)) for s in got.values()) == cfg["n_params"]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")  # The raw orbax restore below.
def test_save_restore_round_trip_is_bit_exact(tmp_path):
  rng = np.random.default_rng(3)
  params = {"PaliGemma": {"llm": {"final_norm": {"scale": rng.normal(size=(8,)).astype(np.float32)},
                                  "layers": {"mlp": {"linear": rng.normal(size=(2, 4, 8)).astype(np.float32)}}}},
            "action_out_proj": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                                "bias": np.float32([1e-30, -0.0, 3.4e38])}}
  checkpoints.save_params(tmp_path / "params", params)

  # On disk it is an openpi params item: {"params": {..., leaf: {"value": array}}}.
  raw = ocp.PyTreeCheckpointer().restore((tmp_path / "params").absolute())
  np.testing.assert_array_equal(raw["params"]["action_out_proj"]["bias"]["value"], params["action_out_proj"]["bias"])

  want = _flat(params)
  for kwargs in ({}, {"restore_type": np.ndarray}):
    back = _flat(checkpoints.restore_params(tmp_path / "params", **kwargs))
    assert back.keys() == want.keys()
    for key, value in want.items():
      assert back[key].dtype == np.float32, key
      np.testing.assert_array_equal(np.asarray(back[key]).view(np.uint32), np.asarray(value).view(np.uint32), key)

  back16 = _flat(checkpoints.restore_params(tmp_path / "params", dtype=jnp.bfloat16))
  for key, value in want.items():
    assert back16[key].dtype == jnp.bfloat16, key
    expected = np.asarray(value).astype(ml_dtypes.bfloat16)  # Round-to-nearest-even cast.
    np.testing.assert_array_equal(np.asarray(back16[key]).view(np.uint16), expected.view(np.uint16), key)


def test_restore_missing_dir_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    checkpoints.restore_params(tmp_path / "nothing_here")
