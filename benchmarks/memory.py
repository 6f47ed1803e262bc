"""Per-device training memory at full size: full fine-tuning, LoRA, π0.5 and APT's stages. Prints JSON.

  python benchmarks/memory.py [--batch 32] [--only pi0_lora] > memory.json

For every row the full-size train step is compiled from shapes on 8 fake CPU devices (apt_jax.tools.aot_check:
nothing is allocated) under FSDP 1 (params replicated, batch data-parallel over 8) and FSDP 8. Per device: param,
optimizer-state and EMA bytes from the shardings (exact: they are the arrays' shapes), and XLA's memory analysis
(arguments, outputs, temporaries; the temporaries are the CPU compiler's, GPU/TPU ones differ). Every row runs at the
same global batch (`--batch`, 32: 4 samples per device), so the rows differ only in what is trained and stored.
Adam keeps two float32 moments per trainable param: optimizer bytes = 8 × trainable params / FSDP shards.
"""

import argparse
import json
import os
import sys
import time

# Config file, arg, what the row is.
ROWS = {
    "pi0_full": ("pi0_libero.py", None, "π0 full fine-tuning (openpi pi0_libero, EMA)"),
    "pi0_lora": ("pi0_libero_low_mem_finetune.py", None, "π0 LoRA fine-tuning (openpi pi0_libero_low_mem_finetune)"),
    "pi05_full": ("pi05_libero.py", None, "π0.5 full fine-tuning (openpi pi05_libero, EMA)"),
    "apt_stage1": ("pi0_apt_libero.py", "stage1", "APT Stage 1 on π0 (VLM frozen, no prompt)"),
    "apt_stage2": ("pi0_apt_libero.py", "stage2", "APT Stage 2 on π0 (VLM frozen, gated fusion)"),
    "apt_stage2_vlm_lora": ("pi0_apt_libero.py", "stage2_vlm_lora", "APT Stage 2 + VLM LoRA (r=16, α=16)"),
}
FSDP = (1, 8)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=32, help="global batch of every row")
  p.add_argument("--only", nargs="*", choices=sorted(ROWS), help="rows to run (default: all)")
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(FSDP)}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from apt_jax import configs
  from apt_jax.tools import aot_check

  out = {"batch": args.batch, "devices": max(FSDP), "rows": {}}
  for name in args.only or ROWS:
    file, arg, what = ROWS[name]
    row = {"what": what, "config": f"experiments/{file}" + (f":{arg}" if arg else "")}
    for fsdp in FSDP:
      config = configs.load(configs.REPO_ROOT / "experiments" / file, arg)
      config.batch_size = args.batch
      config.mesh.fsdp_devices = fsdp
      t = time.time()
      r = aot_check.aot_check(config)
      print(f"{name} fsdp={fsdp}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
      row.update(params=r["params"], trainable_params=r["trainable_params"])
      step = r["train_step"]
      # The layout of docs/memory.json: state from the shardings, then XLA's memory analysis, per device.
      row[f"fsdp{fsdp}"] = {
          "per_device_GiB": {k: round(v / 2**30, 3) for k, v in r["state_per_chip_bytes"].items()},
          "memory_analysis_GiB": {f"{k}_size_in_bytes": v for k, v in step["per_chip_GiB"].items() if k != "total"},
          "compile_s": step["compile_s"]}
    out["rows"][name] = row
  print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
  main()
