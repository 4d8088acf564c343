"""Compare runs: python report.py [RUN_OR_FOLDER ...] [-c config.json] [-o KEY=VALUE ...] [--csv FILE]
[--plot METRIC ... [--out FILE.png]]

Prints one Markdown table of the runs side by side: state, epochs, the best monitored value and
its epoch, the final lr, the wall time and the config keys in which they differ. Runs that
differ only in trainer.seed (each seed once) are one row (mean ± sample standard deviation). A
run found in a folder of runs that cannot be read is left out with a line saying why; one named
itself is an error. In a project made with sweeps, a study's folder lists its trials. Only reads
run folders; writes only the files it is asked for."""

import argparse
import importlib.util
import sys
from pathlib import Path

import matplotlib

from cli import CommandLineParser, refuse_output_overrides
from reports.find import find_runs, is_run_folder, is_study_folder, runs_folder, studies_hint, studies_in
from reports.output import check_output, write_files
from reports.plot import check_metrics, figure_bytes, plot_metrics
from reports.run_folder import read_runs
from reports.table import Table, runs_table
from utils.errors import InputError, listed

DEFAULT_PLOT = "report.png"
STUDIES = importlib.util.find_spec("reports.study") is not None  # a project made with sweeps


def command_line_parser() -> CommandLineParser:
    parser = CommandLineParser(description="Compare runs: their states, best values, wall times and the config keys "
                               "they differ in, one table; --plot draws metrics per epoch.")
    parser.add_argument("runs", nargs="*", metavar="RUN_OR_FOLDER",
                        help="run folders, or folders of runs (default: every run of the config's name under its "
                        "trainer.save_dir)" + ("; a study's folder alone lists its trials" if STUDIES else ""))
    parser.add_argument("-c", "--config", help="without RUN_OR_FOLDER: the config whose runs to compare "
                        "(default config.json)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="without RUN_OR_FOLDER: set a config key as in train.py, e.g. -o trainer.save_dir=/data")
    parser.add_argument("--csv", metavar="FILE", help="also write the table to FILE as CSV")
    parser.add_argument("--plot", nargs="+", action="extend", metavar="METRIC",
                        help="draw these metrics.csv columns per epoch, one panel each (e.g. --plot loss val_loss)")
    parser.add_argument("--out", metavar="FILE", help=f"the plot's file (default {DEFAULT_PLOT}; .png, .svg, .pdf)")
    return parser


def report_paths(args: argparse.Namespace) -> list[Path]:
    """The paths to report on: RUN_OR_FOLDER, or the folder where the config puts its runs."""
    refuse_output_overrides(args.override)
    if args.runs:
        if args.config or args.override:
            raise InputError("-c and -o say where a config's runs are: give them without RUN_OR_FOLDER")
        return [Path(path) for path in args.runs]
    config = Path(args.config or "config.json")
    folder = runs_folder(config, args.override)
    if not folder.is_dir() or not any(is_run_folder(child) for child in folder.iterdir()):
        raise InputError(f"no runs of config '{config}' in '{folder}' yet; train one with python train.py -c "
                         f"{config}{studies_hint(folder)}")
    return [folder]


def study_notes(paths: list[Path]) -> list[str]:
    """A line for each folder given whose study folders the table leaves out."""
    notes = []
    for path in paths:
        studies = [] if is_run_folder(path) else studies_in(path)
        if studies:
            notes.append(f"Studies in {path} (not in the table): {listed([s.name for s in studies])}; report one "
                         f"with python report.py {studies[0]}")
    return notes


def report(args: argparse.Namespace) -> tuple[Table, dict[Path, bytes]]:
    """The table and the files asked for, all made before any is written."""
    paths = report_paths(args)
    out = Path(args.out or DEFAULT_PLOT)
    if args.out and not args.plot:
        raise InputError("--out names the plot's file: give --plot METRIC too")
    if args.csv:
        check_output(Path(args.csv))
    if args.plot:
        check_output(out, image=True)
    study, notes = None, []
    if len(paths) == 1 and STUDIES and is_study_folder(paths[0]):
        from reports.study import study_figures, study_report

        table, rows, study = study_report(paths[0])
    else:
        runs, left_out = read_runs(*find_runs(paths))
        table, rows = runs_table(runs)
        notes = left_out + study_notes(paths)
    files: dict[Path, bytes] = {}
    if args.plot:
        check_metrics([run for row in rows for run in row.runs], args.plot)
        files[out] = figure_bytes(plot_metrics(rows, args.plot), out)
        if study is not None:
            optuna_files, optuna_notes = study_figures(study, rows, out)
            files.update(optuna_files)
            notes += optuna_notes
    if args.csv:
        files[Path(args.csv)] = table.csv().encode("utf-8")
    table.notes += notes
    return table, files


def main(argv: list[str] | None = None) -> int:
    args = command_line_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only: no display needed
    try:
        table, files = report(args)
        write_files(files)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.markdown())
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
