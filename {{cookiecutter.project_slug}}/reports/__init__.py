"""report.py's work: reading a run folder back (run_folder), finding the runs that paths or a
config name (find), putting runs side by side (table), their curves per epoch (plot), the files
asked for (output), and, in a project with sweeps, a study's trials with Optuna's plots (study);
and test.py --report's evaluation report (evaluation). Nothing here is imported by training."""
