"""Training: the one training step for every strategy and what runs around it.

* `trainer`: `Trainer` (one custom step for the default, Mirrored and MultiWorkerMirrored
  strategies), `make_optimizer`;
* `callbacks`: checkpoints of the adapter, early stopping, the collapse detector, logs;
* `distribute`: choosing and building the `tf.distribute` strategy;
* `runtime`: threads, XLA, mixed precision and the ``"auto"`` settings of this machine.

Floor 2: above data and models, below runs.
"""
