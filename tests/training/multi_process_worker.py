"""``fit(..., mesh=...)`` from Python in a job of several processes; writes what it trained.

``test_multi_process.py`` runs ``python multi_process_worker.py OUT`` twice: as one process of
4 simulated CPU devices, and under :func:`jaxtricks.cli.launch.launch` as 2 processes of 2
(which appends ``--coordinator-address ADDR --num-processes 2 --process-id I``). Every process
passes the same data and seed; process I writes ``OUT/process_I.npz``: the final parameters,
flattened in tree order, and the test loss.
"""

import argparse
import os

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from training_toys import toy_problem

import jaxtricks as jt
from jaxtricks.backend import initialize_distributed
from jaxtricks.models import CNN
from jaxtricks.training import evaluate, fit, make_eval_step
from jaxtricks.training.sharding import make_mesh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--coordinator-address")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--shard-optimizer-state", action="store_true")
    args = parser.parse_args()
    if args.num_processes is not None:
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    mesh = make_mesh()
    x, y = toy_problem(0, 128)
    test_x, test_y = toy_problem(1, 64)
    model = CNN(features=(4,), hidden=16, num_classes=3, use_batch_norm=True, dropout_rate=0.2)
    optimizer = optax.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-2, weight_decay=1e-2))
    state, history = fit(model, optimizer, x, y, epochs=2, batch_size=16, seed=3, mesh=mesh,
                         shard_optimizer_state=args.shard_optimizer_state, progress=False,
                         runner="loop")
    test = evaluate(make_eval_step(model, mesh=mesh), state, test_x, test_y, batch_size=16)
    leaves = [np.asarray(leaf) for leaf in
              jax.tree.leaves(multihost_utils.process_allgather(
                  state.params, tiled=True))]
    np.savez(os.path.join(args.out, f"process_{jax.process_index()}.npz"), *leaves,
             test_loss=np.float64(test["loss"]), processes=jax.process_count(),
             devices=mesh.size, train_loss=np.float64(history["loss"][-1]))


if __name__ == "__main__":
    main()
