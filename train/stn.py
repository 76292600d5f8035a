"""Train 3DMM-STN: ``python -m train.stn [--preset default|paper|tiny] [--set key=value ...] [--key value]``.

Presets (:func:`preset`):

* ``default``: the embedded procedural model (``jface.models.default_stn_model``), generated
  photographic faces (``jface.data.synthetic_stn_render``) framed by the photographs' crop rule, a
  small ResNet localiser at 96 px (``jface.stn.resnet``); finishes with the held-out evaluation,
  data generation included, in a few minutes on 2 CPU cores. Adam, the
  original's loss weights with the batch-mean reduction, theta read through a whitening affine map
  (theta = mean + std * (raw - init bias), mean/std of the training labels, so step 0 predicts the
  mean pose and shape = the evaluation baseline), and a 3D shape term against the generated faces'
  exact shapes (``shape_weight`` 30; not one of the original's losses).
* ``gpu``: the default on a GPU's budget: 6,000 generated faces, the ResNet localiser at 128 px
  and width 16, batch 64, 6,000 steps (about 6 minutes on one H100, data generation included;
  BUILD_NOTES.md has its figures).
* ``paper``: the original (``dagnn_3dmmasstn.m`` with MatConvNet's ``cnn_train_dag``): VGG-Face
  localiser (``--vggface_mat`` to load weights), a user-prepared model (``--model
  path/to/model.npz`` from ``jface.models.save_model``), SGD momentum 0.9, learning rate 1e-10 with
  multipliers 4/8 on the theta weights/bias, weight decay 5e-4 (0 on the theta bias), batch 32
  doubled by mirrors, loss weights 0.8998 / 0.1 / 1e-4 / 1e-4 on the original's un-normalised sums.
* ``tiny``: tests and smoke runs.

Any config field (:class:`jface.training.stn.Config`) can be overridden: ``--set steps=100 --set
batch_size=8`` or ``--steps 100``. Tuples are comma-separated (``--set loss_weights=0.9,0.1,0,0``),
booleans true/false.

Data: ``--data SRC`` / ``--eval_data SRC`` (``generated``, the default: the in-memory generator; a
built TFDS dataset by name or directory; a folder of photographs in identity sub-folders, built
into ``--data_dir`` on first use, see ``jface.data.sources``). A source that cannot be used is a
one-line error and exit status 2, before the work directory is touched.

Other flags: ``--eval RUN`` (a run folder, its checkpoint folder or one step's folder; prints
metrics next to the mean-pose-and-shape baseline on ``--eval_data``, default the run's generated
held-out split; the run's own config and theta statistics come from its checkpoint), ``--json OUT``
(with ``--eval``: per-image and mean landmark NME as JSON: ``nme``, ``baseline_nme``,
``per_image``, ``images``), ``--coordinator host:port --num_processes N --process_id i`` (multi-host;
automatic on Cloud TPU VMs). A run resumes from ``workdir``'s latest checkpoint automatically;
SIGTERM saves a checkpoint and exits with status 143. A start on a finished run (its newest
checkpoint at ``steps``) is recognised from the folder before any data is made: it prints the
metrics the run saved (``workdir/metrics.json``) and exits 0. Every held-out metric is printed beside
the baseline's with a verdict (better / worse / within noise: 2 standard errors of the mean
per-image difference, :func:`jface.training.metrics.compare`). JAX's persistent compilation cache
(in the jface cache folder) is on unless ``--no_compilation_cache`` or ``JFACE_COMPILATION_CACHE=0``.
A user's mistake (a flag, a preset, a missing or refused file, a workdir that cannot be used, a disk
that refuses a checkpoint) is one line on stderr and exit status 2.

The training itself is :mod:`jface.training.stn` (the pure step ``train_step(state, batch) ->
(state, metrics)`` around :func:`jface.stn.apply_network`, the loop, evaluation, loading a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax

from jface import cli
from jface import training as common
from jface.data.detect import DetectorMissingError
from jface.data.errors import DataSourceError
from jface.errors import ModelFileError
from jface.training.checkpoint import CheckpointError, CheckpointLayoutError, RunFormatError, WorkdirBusyError
from jface.training.loop import CheckpointWriteError
from jface.training.runs import refuse_busy_workdir
from jface.training.stn import Config, check_choices, evaluate, finished_step, report_finished, train

__all__ = ["Config", "PRESETS", "preset", "parse_args", "main"]

PRESETS = {
    "default": Config(),
    "paper": Config(
        model="", localiser="vgg_face", whiten_theta=False, optimizer="sgd", shape_weight=0.0,
        learning_rate=1e-10, lr_schedule="constant", warmup_steps=0, momentum=0.9,
        weight_decay=5e-4, theta_lr_mult=(4.0, 8.0), theta_bias_decay=False, batch_size=32,
        mirror=True, loss_reduction="sum", steps=100_000, workdir="runs/stn_paper",
        checkpoint_every=2000, log_every=50, image_every=2000),
    "gpu": Config(
        num_identities=600, images_per_identity=10, localiser_input=128, localiser_width=16,
        batch_size=64, steps=6000, warmup_steps=100, checkpoint_every=1000, log_every=250,
        image_every=1000, workdir="runs/stn_gpu"),
    "tiny": Config(
        model="toy:16", generator="splat", image_size=64, num_identities=8, images_per_identity=4,
        eval_identities=4, eval_images_per_identity=2, localiser_input=32,
        localiser_width=2, batch_size=8, steps=6, warmup_steps=0,
        checkpoint_every=3, log_every=1, image_every=0, eval_batch=8,
        workdir="runs/stn_tiny"),
}


def preset(name: str) -> Config:
    """The named preset's :class:`Config` (see the module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    return PRESETS[name]


def parse_args(argv):
    """``(args, config)`` from the command line: the preset, then ``--set`` / ``--key`` overrides."""
    fields = "\n".join(f"  --{f.name} {f.default!r}" for f in dataclasses.fields(Config))
    parser = cli.ArgumentParser(
        prog="python -m train.stn", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (default preset values; override with --set KEY=VALUE or --KEY VALUE):\n" + fields)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval", default=None, metavar="RUN")
    parser.add_argument("--json", default=None, metavar="OUT", help="with --eval: write the metrics as JSON")
    parser.add_argument("--no_compilation_cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (also: JFACE_COMPILATION_CACHE=0)")
    common.add_distributed_args(parser)
    args, rest = parser.parse_known_args(argv)
    args.local_device_ids = common.parse_device_ids(args.local_device_ids)
    pairs = common.override_pairs(args.set, rest)
    config = common.apply_overrides(preset(args.preset), pairs, flags=list(parser._option_string_actions))
    check_choices(config)  # a misspelt name is a flag error before any work
    return args, config


#: Mistakes of the user or the machine that end ``main`` with one line and exit status 2.
USER_ERRORS = (DataSourceError, DetectorMissingError, WorkdirBusyError, RunFormatError, CheckpointError,
               CheckpointLayoutError, CheckpointWriteError, ModelFileError, FileNotFoundError, NotADirectoryError)


def main(argv=None) -> int:
    """The command line (module docstring). A user's mistake (a flag, a preset, a missing or refused
    file, a workdir that cannot be used, a disk that refuses a checkpoint) is one line on stderr and
    exit status 2; a non-finite loss exits 1, a signal 143."""
    try:
        args, config = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as err:  # a user's mistake in the flags: one line, not a traceback
        print(f"train.stn: {err}", file=sys.stderr, flush=True)
        return 2
    return cli.run("train.stn", lambda: _run(args, config), USER_ERRORS)


def _run(args, config) -> int:
    common.initialize_from_args(args)
    if not args.no_compilation_cache:
        common.enable_compilation_cache()  # a second run compiles nothing it compiled before
    if common.is_main_process():
        print(f"jax {jax.__version__}: {jax.process_count()} process(es), {jax.device_count()} device(s) "
              f"({jax.devices()[0].platform})", flush=True)
    try:
        if args.eval:
            evaluate(args.eval, config.eval_data, data_dir=config.data_dir or None, json_path=args.json)
            return 0
        cli.check_output_dir(config.workdir, "--workdir", create=False)
        if common.is_main_process():
            refuse_busy_workdir(config.workdir)  # a live run there: say so before making any data
        step = finished_step(config)  # before any data is made: a finished run only reports
        if step is not None:
            report_finished(config, step)
            return 0
        train(config)
    except common.NonFiniteLossError as err:
        print(f"train.stn: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
