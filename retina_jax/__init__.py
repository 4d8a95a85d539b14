"""retina_jax: a JAX/Flax research codebase for retinal image analysis.

Usage:
  python -m retina_jax.main --config=configs/vessels.py --workdir=runs/vessels
"""
