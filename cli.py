"""affpipe command line: commands parse and validate, then call the library (the Python API).

Each command maps library errors to one clear line (click.ClickException) and a
meaningful exit status; the work itself lives in pipeline/ and fusion/.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import functools  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402

from fusion.head_names import HEAD_NAMES  # noqa: E402
from pipeline.engine.names import LOCAL_SCHEDULERS, SPLITS, STAGE_NAMES  # noqa: E402

# Conventions every command follows (README, "Command line"):
# - the cache is `--cache/-c`, default `cache`; the manifest `--manifest/-m`; outputs `--out`;
#   the run folder or submission folder a command works on is its positional argument;
# - closed sets (stages, schedulers, heads, splits) are click choices: a bad value is a usage error (exit 2);
# - library errors (bad input) are one line and exit 1 (`_cli_errors`); `extract` exits 3 for input verdicts;
# - live progress, warnings and summaries go to stderr; results and `--json` go to stdout.
# This module imports no torch, dask or numpy at import time: `affpipe --help` answers at once.


class SchedulerType(click.ParamType):
    """``processes``, ``threads``, ``sync`` or ``tcp://HOST:PORT``: a closed set plus addresses."""

    name = "scheduler"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(LOCAL_SCHEDULERS) + "|tcp://HOST:PORT]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text in LOCAL_SCHEDULERS:
            return text
        if text.startswith("tcp://") and len(text) > len("tcp://"):
            return text
        self.fail(f"{value!r} is not one of {', '.join(LOCAL_SCHEDULERS)} or tcp://HOST:PORT", param, ctx)


class StageListType(click.ParamType):
    """Comma-separated stage names, each one of `STAGE_NAMES`."""

    name = "stages"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "STAGE[,STAGE...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        unknown = [v for v in items if v not in STAGE_NAMES]
        if unknown or not items:
            self.fail(f"unknown stage(s) {', '.join(map(repr, unknown)) or repr(value)} "
                      f"(choose from {', '.join(STAGE_NAMES)})", param, ctx)
        return items


SCHEDULER_HELP = "processes (local spawned workers), threads, sync, or tcp://HOST:PORT of a dask scheduler."


def cache_option(help: str = "Shard cache folder (written by `affpipe extract`).") -> Callable:
    """The one `--cache/-c` option: every command defaults to `cache` (the folder the README uses)."""
    return click.option("--cache", "-c", "cache_dir", default="cache", show_default=True,
                        type=click.Path(file_okay=False), help=help)


def manifest_option(required: bool = True) -> Callable:
    return click.option("--manifest", "-m", required=required, type=click.Path(dir_okay=False),
                        help="Manifest CSV (one row per trial: trial, video, split, ...).")


def split_option(default: str, help: str = "Split of the manifest.") -> Callable:
    return click.option("--split", default=default, show_default=True, type=click.Choice(SPLITS), help=help)


def _fail(exc: BaseException | str) -> click.ClickException:
    """One clear line for errors of bad input (the library's messages name file, line, column).

    An OSError (read-only folder, a path below a regular file, disk full) reads
    ``path: reason``; any message is cut to its first line.
    """
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return click.ClickException(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)


def _is_library_error(exc: BaseException, also: tuple[type[BaseException], ...]) -> bool:
    """Bad input, not a bug: ValueError/OSError, or an error class pipeline/ or fusion/ defines."""
    if isinstance(exc, (ValueError, OSError) + also):
        return True
    return type(exc).__module__.split(".")[0] in ("pipeline", "fusion") and isinstance(exc, Exception)


def _cli_errors(func: Callable | None = None, *, also: tuple[type[BaseException], ...] = ()) -> Callable:
    """The one error mapping of every command: library errors -> one line on stderr, exit 1.

    Bugs (TypeError, KeyError, AttributeError, ...) keep their traceback; click's
    own exceptions and `SystemExit` (exit statuses chosen by the command) pass.
    """
    def wrap(f: Callable) -> Callable:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as exc:  # noqa: BLE001  (filtered just below)
                if _is_library_error(exc, also):
                    raise _fail(exc) from None
                raise
        return run

    return wrap(func) if func is not None else wrap


def _plain(text: object) -> str:
    """Text for rich output: messages and names may hold ``[...]``, which rich would read as markup."""
    from rich.markup import escape

    return escape(str(text))


def _console():
    from rich.console import Console

    return Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="affpipe")
def main() -> None:
    """affpipe: cached multimodal feature extraction and fusion training for valence/arousal."""


# --- extraction commands (pipeline/) -------------------------------------------------------


@main.command()
@manifest_option()
@cache_option("Cache root (shared by all workers).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Stage settings (JSON or TOML); see `affpipe config show`.")
@click.option("--stages", type=StageListType(),
              help=f"Comma-separated subset of {', '.join(STAGE_NAMES)}; their dependencies are pulled in.")
@click.option("--scheduler", default="processes", show_default=True, type=SchedulerType(), help=SCHEDULER_HELP)
@click.option("--workers", type=click.IntRange(min=1), help="Local workers (processes/threads).")
@click.option("--dry-run", is_flag=True, help="Print per stage what is cached, to compute, failed before; compute nothing.")
@click.option("--retry-failed", is_flag=True, help="Re-run the (trial, stage) pairs in the failure ledger.")
@click.option("--gpu", is_flag=True, help="GPU-capable stages ask Dask workers for resource GPU=1.")
@click.option("--split-frames", type=click.IntRange(min=0), default=1800, show_default=True,
              help="Trials longer than this many frames are cut into frame ranges that several workers share "
                   "(faces, visual); 0 never splits. Changes no result and no key.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@_cli_errors
def extract(manifest, cache_dir, config_file, stages, scheduler, workers, dry_run, retry_failed, gpu, split_frames,
            as_json):
    """Extract features for every trial of a manifest into the shard cache.

    Exit status: 0 every shard written; 3 some trials got input verdicts
    (no-face, corrupt-media, ...: correct outcomes, training skips them); 1 errors.
    """
    import json

    from pipeline.engine.runner import extract as run_extract

    console = _console()
    summary = run_extract(manifest, cache=cache_dir, config=config_file, stages=stages, scheduler=scheduler,
                          workers=workers, dry_run=dry_run, retry_failed=retry_failed,
                          progress=not as_json, gpu=gpu, console=None if (as_json or dry_run) else console,
                          split_frames=split_frames)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    elif dry_run:
        click.echo(f"{'stage':<8} {'cached':>7} {'todo':>7} {'failed':>7} {'blocked':>7}")
        for stage, c in summary.counts.items():
            click.echo(f"{stage:<8} {c['cached']:>7} {c['todo']:>7} {c['failed-before']:>7} {c['blocked']:>7}")
        for d in summary.damaged:
            click.echo(f"damaged {d['path']}: {d['problem']} (the next run recomputes it)")
    else:
        from pipeline.engine.verdicts import is_verdict

        for d in summary.damaged:
            console.print(f"recomputed damaged shard {d['path']}: {d['problem']}", markup=False)
        for f in summary.failures[:20]:
            label = "[yellow]verdict[/yellow]" if is_verdict(f["kind"]) else "[red]failed[/red]"
            console.print(f"{label} {_plain(f['trial'])} {f['stage']} ({_plain(f['kind'])}): {_plain(f['message'])}")
        if len(summary.failures) > 20:
            console.print(f"... and {len(summary.failures) - 20} more in {_plain(summary.cache)}/ledger.jsonl")
        console.print(f"shards in {_plain(summary.cache)}; run summary {_plain(summary.summary_path)}")
    if not summary.ok and not dry_run:
        status, line = _extract_outcome(summary, manifest, cache_dir, config_file)
        click.echo(line, err=True)
        raise SystemExit(status)


def _extract_outcome(summary, manifest: str, cache: str, config: str | None) -> tuple[int, str]:
    """Exit status and one line for a run that did not produce every shard: verdicts apart from errors.

    Input verdicts (no-face, corrupt-media, ...) are correct outcomes: exit 3,
    nothing to retry. Anything else is an error: exit 1, retry after fixing.
    The plan after the run holds this run's failures and the ones from before.
    """
    from pipeline.engine.reader import open_cache
    from pipeline.engine.verdicts import EXIT_ERRORS, EXIT_VERDICTS, is_verdict

    kinds: dict[tuple[str, str], str] = {(f["trial"], f["stage"]): f["kind"] for f in summary.failures}
    try:
        reader = open_cache(cache, manifest, config)
        for stage in summary.counts:
            for trial, (_stage, kind, _msg) in reader.unavailable([stage]).items():
                kinds.setdefault((trial, stage), kind)
    except Exception:  # noqa: BLE001  (the classification must never hide the run's own outcome)
        pass
    verdict_trials = sorted({t for (t, _s), k in kinds.items() if is_verdict(k)})
    errors = sorted({(t, s) for (t, s), k in kinds.items() if not is_verdict(k)})
    by_kind: dict[str, int] = {}
    for (_t, _s), k in kinds.items():
        if is_verdict(k):
            by_kind[k] = by_kind.get(k, 0) + 1
    verdict_text = (f"{len(verdict_trials)} trial(s) with input verdicts ("
                    + ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items()))
                    + "): correct outcomes, training skips them")
    if errors or not kinds:
        prefix = f"{verdict_text}; " if verdict_trials else ""
        return EXIT_ERRORS, (f"{prefix}{len(errors)} (trial, stage) error(s): see `affpipe failures`, fix the "
                             "cause and re-run with `affpipe extract --retry-failed`")
    return EXIT_VERDICTS, f"finished; {verdict_text} (`affpipe failures` lists them)"


@main.group()
def cache():
    """Inspect, verify and prune the shard cache."""


@cache.command("ls")
@cache_option()
@_cli_errors
def cache_ls(cache_dir):
    """Per stage and settings: shards, trials, frames, bytes of the current shards; the others apart."""
    from pipeline.engine.cache_admin import list_cache

    rows, other = list_cache(cache_dir)
    if not rows and not other["shards"]:
        click.echo(f"{cache_dir}: no shards", err=True)
        return
    click.echo(f"{'stage':<8} {'shards':>6} {'trials':>6} {'frames':>9} {'MiB':>9}  settings")
    for r in rows:
        click.echo(f"{r['stage']:<8} {r['shards']:>6} {r['trials']:>6} {r['frames']:>9} "
                   f"{r['bytes'] / 2**20:>9.2f}  {r['settings']}")
    if other["shards"]:
        click.echo(f"{other['shards']} other shard(s), {other['bytes'] / 2**20:.2f} MiB: superseded versions or not "
                   "in the cache index (`affpipe cache gc` removes those no manifest+config uses)")


@cache.command("verify")
@cache_option()
@click.option("--repair", is_flag=True, help="Delete bad shards (the next extract recomputes them).")
@_cli_errors
def cache_verify(cache_dir, repair):
    """Read every shard in full: checksums, schema, counts, finite values (exit 1 if any is bad)."""
    from pipeline.engine.cache_admin import verify_cache

    report = verify_cache(cache_dir, repair=repair)
    for path, problems in report.bad.items():
        click.echo(f"{'REMOVED' if path in report.removed else 'BAD'} {path}: {'; '.join(problems)}")
    if report.temporaries:
        click.echo(f"{len(report.temporaries)} leftover temporary file(s) of killed writers "
                   "(removed by `cache gc --yes`)", err=True)
    click.echo(f"checked {report.checked} shard(s), {len(report.bad)} bad"
               + (f", {len(report.removed)} removed" if repair else
                  (" (`affpipe cache verify --repair` removes them; `affpipe extract` recomputes them)"
                   if report.bad else "")), err=True)
    if not report.ok:
        raise SystemExit(1)


@cache.command("gc")
@cache_option()
@click.option("--manifest", "-m", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Manifest whose trials' shards to keep (repeatable).")
@click.option("--config", "config_file", multiple=True, type=click.Path(dir_okay=False),
              help="Config(s) whose shards to keep (repeatable; default settings when absent).")
@click.option("--yes", is_flag=True, help="Really delete (otherwise only list).")
@_cli_errors
def cache_gc(cache_dir, manifest, config_file, yes):
    """Remove shards that no manifest+config references, and leftovers (dry run unless --yes).

    Needs no videos: shards are resolved through the cache index. Refused while an extract runs.
    """
    from pipeline.engine.cache_admin import collect_garbage
    from pipeline.sources.manifest import read_manifest

    try:
        uses = [(read_manifest(m), cfg) for m in manifest for cfg in (config_file or (None,))]
        plan = collect_garbage(cache_dir, uses, yes=yes)
    except OSError as exc:
        raise _fail(f"{exc.filename or cache_dir}: {exc.strerror or exc}") from None
    for p in plan.shards + plan.leftovers:
        click.echo(("removed " if yes else "would remove ") + str(p))
    if plan.kept_unresolved:
        click.echo(f"kept {len(plan.kept_unresolved)} unreferenced shard(s) of trials whose current shard is "
                   "neither in the cache index nor computable without their inputs (run `affpipe extract` "
                   "where the inputs are, then gc again)", err=True)
    n = len(plan.shards) + len(plan.leftovers)
    click.echo(f"{n} file(s) {'removed' if yes else 'unreferenced (use --yes to delete)'}"
               + (f"; {len(plan.locks)} lock file(s) cleared" if plan.locks else ""), err=True)


@main.group()
def config():
    """Stage and training settings."""


@config.command("show")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Resolve this file over the defaults.")
@click.option("--preset", type=click.Choice(["default", "paper"]), help="Show a named preset.")
@_cli_errors
def config_show(config_file, preset):
    """Validate and print every setting, stages and training (JSON, usable as --config).

    It refuses exactly what `extract` and `train` refuse (unknown names, wrong
    types, out-of-range values), with the same one-line message.
    """
    import json

    from fusion.config import show_config

    resolved = show_config(config_file if config_file else ({"preset": preset} if preset else None))
    click.echo(json.dumps(resolved, indent=2, sort_keys=True))


@main.command()
@cache_option()
@click.option("--stages", type=StageListType(), help="Only these stages (comma-separated, as for extract).")
@click.option("--stage", "stage_alias", type=click.Choice(STAGE_NAMES), hidden=True,
              help="One stage (older spelling of --stages).")
@_cli_errors
def failures(cache_dir, stages, stage_alias):
    """List the failure ledger (latest entry per shard that still has no output), tab-separated on stdout."""
    from pipeline.engine.store import CacheStore
    from pipeline.engine.verdicts import is_verdict

    wanted = set(stages or ()) | ({stage_alias} if stage_alias else set())
    entries = CacheStore(cache_dir).failed_keys().values()
    shown = [e for e in entries if not wanted or e.stage in wanted]
    for e in shown:
        click.echo(f"{e.trial}\t{e.stage}\t{e.kind}\t{e.message}")
    verdicts = sum(1 for e in shown if is_verdict(e.kind))
    errors = len(shown) - verdicts
    if verdicts:
        click.echo(f"{verdicts} input verdict(s): correct outcomes for these inputs (retrying gives the same); "
                   "fix the input file and extract again, or leave them: train and evaluate skip those trials",
                   err=True)
    if errors:
        click.echo(f"{errors} error(s); after fixing the cause re-run them with `affpipe extract --retry-failed`",
                   err=True)
    if not shown:
        click.echo("0 open failure(s)", err=True)


@main.group("transcripts")
def transcripts_group() -> None:
    """Speech-recognised transcripts (the asr stage)."""


@transcripts_group.command("export")
@manifest_option()
@cache_option()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Stage settings the asr shards were extracted with.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for <trial>.json / <trial>.srt.")
@click.option("--format", "fmt", default="json", show_default=True, type=click.Choice(["json", "srt"]),
              help="json keeps word timings and confidences; srt has one cue per speech region.")
@click.option("--manifest-out", type=click.Path(dir_okay=False),
              help="Also write a manifest whose empty transcript cells point at the exported files.")
@_cli_errors
def transcripts_export(manifest, cache_dir, config_file, out, fmt, manifest_out):
    """Write the recognised words of every trial as JSON or SRT (the formats the text stage reads)."""
    from pipeline.asr.export import export_transcripts

    report = export_transcripts(manifest, cache_dir, out, fmt, config=config_file, manifest_out=manifest_out)
    click.echo(f"wrote {len(report.written)} transcript(s) to {out}"
               + (f"; {len(report.empty)} without recognised words" if report.empty else "")
               + (f"; {len(report.skipped)} skipped (their manifest transcript is used)" if report.skipped else ""),
               err=True)
    if report.manifest is not None:
        click.echo(f"manifest with transcripts: {report.manifest}", err=True)
    if report.missing:
        shown = ", ".join(report.missing[:10]) + (" ..." if len(report.missing) > 10 else "")
        click.echo(f"{len(report.missing)} trial(s) have no asr shard for this config ({shown}); "
                   f"run `affpipe extract -m {manifest} --stages asr` first", err=True)
        raise SystemExit(1)


# --- manifest commands ----------------------------------------------------------------------


@main.group("manifest")
def manifest_group() -> None:
    """Build manifest CSVs (one row per trial) from dataset trees."""


@manifest_group.command("affwild2")
@click.option("--root", required=True, type=click.Path(path_type=Path),
              help="Aff-Wild2 release folder (videos, annotations, cropped_aligned at any depth).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest CSV to write, e.g. manifests/affwild2.csv.")
@click.option("--test-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ABAW test-set name list (e.g. Valence_Arousal_Estimation_Challenge_test_set_release.txt).")
@click.option("--track", type=click.Choice(["VA", "EXPR", "AU"], case_sensitive=False), default="VA",
              show_default=True, help="Annotation track whose Train_Set/Validation_Set folders are used.")
@_cli_errors
def manifest_affwild2(root: Path, out: Path, test_list: Path | None, track: str) -> None:
    """Scan an Aff-Wild2 tree and write a manifest; exit 1 when no trial matched a video."""
    from pipeline.sources.affwild2 import build_affwild2_manifest, format_report

    try:
        report = build_affwild2_manifest(root, out, track=track, test_list=test_list)
    except OSError as exc:
        raise _fail(f"{exc.filename or out}: {exc.strerror or exc}") from None
    click.echo(format_report(report), err=True)
    if test_list is None and report.unused_videos:
        click.echo("hint: no --test-list given; unused videos are often the test set", err=True)


# --- training commands (fusion/) ------------------------------------------------------------


def _warn_lines(lines) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _run_folder(positional: str | None, option: str | None) -> str:
    """The run folder: positional (the convention) or the older `--run`, not both, not neither."""
    if positional and option and positional != option:
        raise click.UsageError(f"run folder given twice ({positional} and --run {option})")
    run = positional or option
    if not run:
        raise click.UsageError("Missing argument 'RUN' (the run folder `affpipe train --out` wrote).")
    return run


def run_argument(f: Callable) -> Callable:
    """RUN positional, plus the hidden `--run` older scripts use (same meaning)."""
    f = click.option("--run", "run_option", type=click.Path(file_okay=False), hidden=True,
                     help="Same as the RUN argument (older spelling).")(f)
    return click.argument("run", required=False, type=click.Path(file_okay=False))(f)


@main.command()
@manifest_option()
@cache_option()
@click.option("--fusion", required=True, type=click.Choice(HEAD_NAMES), help="Fusion head (see `affpipe heads`).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to create (or resume).")
@click.option("--modalities", help="Comma-separated, e.g. visual,audio,text (default: the config's).")
@click.option("--epochs", type=click.IntRange(min=0), help="Epochs (default: the config's).")
@click.option("--fold", type=click.IntRange(min=0),
              help="Validate on fold K of the 6-fold scheme over train+val (0 = the official split).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Config file (JSON/TOML): its 'train' section, and the 'stages' that define the shards read.")
@click.option("--seed", type=int, help="Random seed (default: the config's).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (after a kill or for more epochs).")
@click.option("--strict", is_flag=True,
              help="Refuse to train when some trials have input verdicts (no-face, ...) instead of skipping them.")
@_cli_errors
def train(manifest, cache_dir, fusion, out, modalities, epochs, fold, config_file, seed, resume, strict):
    """Train a fusion head on cached features; validate every epoch; write a run folder."""
    from fusion.train import train as run_train

    try:
        result = run_train(manifest, cache_dir, fusion, out, modalities=modalities, epochs=epochs, fold=fold,
                           config=config_file, resume=resume, seed=seed, progress=True, strict=strict)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; continue with `affpipe train ... --out {out} --resume`") from None
    best = result.best or {}
    click.echo(f"{out}: {result.epochs_run} epoch(s)" + (" (early stop)" if result.stopped_early else "")
               + (f"; best epoch {result.best_epoch}: val ccc_v {_fmt(best.get('ccc_v'))} "
                  f"ccc_a {_fmt(best.get('ccc_a'))} mean {_fmt(best.get('mean'))}" if result.best_epoch else ""),
               err=True)


@main.command()
def heads():
    """List the fusion heads `affpipe train --fusion` accepts."""
    for name in HEAD_NAMES:
        click.echo(name)


@main.command()
@run_argument
@manifest_option()
@cache_option()
@split_option("val", "Split as the run defined it (a fold run's val is its fold).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report (with per-trial CCC) as JSON on stdout.")
@click.option("--strict", is_flag=True,
              help="Refuse when some trials have input verdicts (no-face, ...) instead of skipping them.")
@_cli_errors
def evaluate(run, run_option, manifest, cache_dir, split, as_json, strict):
    """CCC of a run's best checkpoint: per dimension, mean, and per trial."""
    import json

    from fusion.evaluate import evaluate as run_evaluate

    run_dir = _run_folder(run, run_option)
    result = run_evaluate(run_dir, manifest, cache_dir, split=split, progress=not as_json, strict=strict)
    _warn_lines(result.warnings)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    r = result.report
    click.echo(f"{'trial':<32} {'labelled':>8} {'ccc_v':>7} {'ccc_a':>7} {'mean':>7}")
    for t, m in sorted(r["per_trial"].items()):
        click.echo(f"{t:<32} {m['n_labelled']:>8} {_fmt(m['ccc_v']):>7} {_fmt(m['ccc_a']):>7} {_fmt(m['mean']):>7}")
    click.echo(f"{split} ({r['n_trials']} trials, {r['n_labelled']} labelled frames): ccc_v {_fmt(r['ccc_v'])} "
               f"ccc_a {_fmt(r['ccc_a'])} mean {_fmt(r['mean'])}")


@main.command()
@run_argument
@manifest_option()
@cache_option()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the <trial>.txt files.")
@split_option("test", "Split whose trials get a file.")
@_cli_errors
def predict(run, run_option, manifest, cache_dir, out, split):
    """Write ABAW submission files (<trial>.txt, one line per frame) from a run."""
    from fusion.predict import predict as run_predict

    result = run_predict(_run_folder(run, run_option), manifest, cache_dir, out, split=split, progress=True)
    click.echo(f"{out}: {len(result.files)} file(s), {result.n_frames} frame(s)", err=True)


@main.command("validate-submission")
@click.argument("folder", type=click.Path(file_okay=False))
@manifest_option()
@cache_option("Cache with the trials' probe shards (the frame counts).")
@split_option("test", "Split the submission is for.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Config the cache was extracted with (when not the defaults).")
@_cli_errors
def validate_submission(folder, manifest, cache_dir, split, config_file):
    """Check a submission folder: every file, header, line count, values; exit 1 listing every problem."""
    from fusion.predict import validate_submission as run_validate

    problems = run_validate(folder, manifest, cache_dir, split=split, config=config_file)
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{folder}: {len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo(f"{folder}: valid {split} submission", err=True)


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the merged <trial>.txt files.")
@split_option("test", "Split whose predictions to merge.")
@_cli_errors
def ensemble(sources, out, split):
    """Merge fold runs' predictions (CCC centering) into one submission folder.

    SOURCES are run folders or submission folders, mixed freely.
    """
    from fusion.ensemble import ensemble as run_ensemble

    result = run_ensemble(sources, out, split=split)
    click.echo(f"{out}: {len(result.files)} file(s) merged from {result.n_inputs} inputs", err=True)


# --- the main job on the embedded default dataset --------------------------------------------


@main.command()
@click.option("--root", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo dataset, run and submission go.")
@cache_option()
@click.option("--fusion", default="rjcma", show_default=True, type=click.Choice(HEAD_NAMES),
              help="Fusion head to train.")
@click.option("--scheduler", default="processes", show_default=True, type=SchedulerType(), help=SCHEDULER_HELP)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Local workers.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the demo's epoch count.")
@click.option("--trials", default=8, show_default=True, type=click.IntRange(min=3),
              help="Trials in the demo dataset (split about 5:2:1 into train, val, test).")
@click.option("--seconds", default=6.0, show_default=True, type=click.FloatRange(min=2.0),
              help="Length of each demo trial (a smaller dataset is a quicker smoke test).")
@_cli_errors(also=(RuntimeError,))
def demo(root, cache_dir, fusion, scheduler, workers, epochs, trials, seconds):
    """Build the embedded dataset, extract every stage, train, evaluate and predict."""
    from synthetic.demo_run import run_demo

    result = run_demo(root, cache_dir, fusion=fusion, scheduler=scheduler, workers=workers, epochs=epochs,
                      console=_console(), trials=trials, seconds=seconds)

    def fmt(r):
        return f"CCC valence {r['ccc_v']:.3f}  arousal {r['ccc_a']:.3f}  mean {r['mean']:.3f}"

    click.echo(f"validation ({len(result.val['per_trial'])} trials): {fmt(result.val)}", err=True)
    click.echo(f"test       ({len(result.test['per_trial'])} trials): {fmt(result.test)}", err=True)
    click.echo(f"shards:     {result.cache}", err=True)
    click.echo(f"run:        {result.run}  (metrics.jsonl, plots/, best.pt)", err=True)
    click.echo(f"submission: {result.submission}", err=True)


if __name__ == "__main__":
    main()
