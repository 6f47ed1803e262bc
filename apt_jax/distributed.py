"""Multi-process training: `jax.distributed.initialize` from the config's `distributed` block (one process per host;
`num_processes` 1, the default, is a single-process run and initialises nothing; -1 takes everything from the
cluster environment, as on a Cloud TPU pod slice)."""

from __future__ import annotations

import jax


def initialize(config) -> None:
  d = config.distributed
  if d.num_processes == -1:
    jax.distributed.initialize()
  elif d.num_processes > 1:
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id, local_device_ids=d.local_device_ids)
