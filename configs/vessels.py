"""Vessel segmentation on the built-in 64x64 seed set (retina_vessels): the demo config.

The seed notebook's U-Net (2,161,361 parameters), BCE + soft Dice, flips / 90-degree rotations /
intensity jitter, Adam with warm-up + cosine decay, batch 32.

Usage:
  python -m retina_jax.main --config=configs/vessels.py --workdir=runs/vessels
  python -m retina_jax.main --config=configs/vessels.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return default.get_config(arg)
