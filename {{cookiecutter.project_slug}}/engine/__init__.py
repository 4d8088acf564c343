"""The run engine: the machinery that drives a run and keeps it safe, under the loop of
base/base_trainer.py, the run folder of parse_config.py and the entry points. It owns the
checkpoint file (checkpoint), restoring one under the resume rules (resume, branch,
checkpointed_run), the run folder's records and lock (run_files, run_lock), stop signals
(signals), devices and DDP (device, distributed), the batches of an epoch (batches), the
optimizer step (optimizer_step), scheduler stepping (lr_schedule), metric sums (metric_tracker),
the monitored metric and early stop (monitor), and the check that the model, loss and metrics
fit the data (fit_check). Read it to see how a run works; you need not change it: a model goes
in model/, a dataset in data_loader/, what a batch does in trainer/trainer.py (train_step,
valid_step), options in config.json (config_schema.py lists them)."""
