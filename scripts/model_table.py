"""Prints the README's architecture table: every registered model's trainable parameters and
forward GFLOPs (XLA cost analysis, one image at its reference input size).

Usage: python scripts/model_table.py [--models=unet,resnet50]
"""
import argparse

import jax
import jax.numpy as jnp

from retina_jax import models


def parameter_count(name: str) -> tuple[int, int]:
    """(trainable parameters, batch-norm statistics) at the default configuration."""
    model, shape = models.get_model(name), models.info(name).input_shape
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))  # noqa: E731
    return size(variables["params"]), size(variables.get("batch_stats", {}))


def forward_gflops(name: str) -> float:
    model, shape = models.get_model(name), models.info(name).input_shape
    images = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
    return compiled.cost_analysis()["flops"] / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.available()))
    names = parser.parse_args().models.split(",")
    print("| name | task | input (H, W, C) | parameters | forward GFLOPs | paper |")
    print("|---|---|---|---|---|---|")
    for name in names:
        info = models.info(name)
        params, _ = parameter_count(name)
        print(f"| `{name}` | {info.task} | {info.input_shape} | {params:,} | {forward_gflops(name):.3f} "
              f"| {info.paper} |")


if __name__ == "__main__":
    main()
