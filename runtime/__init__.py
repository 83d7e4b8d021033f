"""The ground floor every stage builds on: config, files, progress, video encoding, distributed
init, checkpoints, the training loop and its launchers, W&B tracking. Nothing here imports a
stage (``pipeline``, ``tokenizer``, ``dynamics``) or the chain (``vidworld``)."""
