"""report.py's work: reading run folders back and putting runs side by side (runs), and, in a
project with sweeps, a study's trials with Optuna's plots (study). Nothing here is imported by
training: these modules only read what a run wrote."""
