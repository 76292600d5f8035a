"""Train DECA: ``python -m train.deca [--preset default|paper|tiny] [--stage all|pretrain|coarse|detail]``.

Stages (DECA's ``decalib/trainer.py`` and ``configs/release_version/*.yml``; each trains only its
own networks, Adam; the step is :func:`jface.training.deca.train_step` around
:func:`jface.deca.stages.stage_loss`):

* ``pretrain``: E_coarse with the landmark losses (weighted landmarks, eye and lip closure) and the
  shape / expression regularisers; nothing is rendered (DECA's pretraining: photo = 0).
* ``coarse``: adds the shaded photometric loss (the paper's, not HEAD's unshaded bug), the identity
  loss (when VGGFace2 weights are given), the texture and colour-neutral light regularisers, and
  shape consistency by swapping shape codes within an identity.
* ``detail``: E_detail and F_d with E_coarse frozen (eval-mode BN, no gradient): the UV detail
  photometric loss, ID-MRF (when VGG-19 weights are given), soft symmetry, shading smoothness,
  the displacement regulariser, and detail consistency by swapping detail codes.

Presets: ``paper`` is DECA's hyperparameters (Adam 1e-4; pretrain 64 x 1, coarse 32 x 4, detail
6 x 3 as the paper says, not the duplicate-key yml; full ResNet-50 encoders; 224 renders; user
files for the FLAME model and the identity / VGG-19 weights). ``default`` runs every stage on the
embedded FLAME-structured model and generated data with small encoders and a small F_d
(He-initialised, soft symmetry off: see BUILD_NOTES), data included, in a few minutes on 2 CPU
cores, and ends by printing held-out metrics next to the mean-face baseline. ``tiny`` is for tests.

Any config field (:class:`jface.training.deca.Config`) can be overridden: ``--set
pretrain_steps=10`` or ``--pretrain_steps 10``. A run resumes each stage from
``workdir/<stage>``'s latest checkpoint; SIGTERM saves and exits 143; a non-finite loss stops the
run and leaves the last good checkpoint in place. Every checkpoint carries the config, the face
model and the code whitening, so ``python -m jface.reconstruct --weights WORKDIR`` loads the run
alone. ``--eval DIR`` prints the held-out metrics a finished run saved; with ``--eval_data SRC``
and/or ``--json OUT`` it loads the run from its checkpoints and writes per-image and mean landmark
NME beside the mean face's (keys ``nme``, ``baseline_nme``, ``per_image``, ``images``).

A start on a finished run (every stage at its step count) is recognised from the folder before any
data is made and prints the metrics the run saved. Every held-out metric is printed beside the mean
face's with a verdict (better / worse / within noise: 2 standard errors of the mean per-image
difference), and the end says how the stages after pretraining moved each metric (a stage that made
one worse says so). JAX's persistent compilation cache is on unless ``--no_compilation_cache`` or
``JFACE_COMPILATION_CACHE=0``. A user's mistake is one line on stderr and exit status 2.

Data: ``--data SRC`` / ``--eval_data SRC`` (``generated``, the default: the in-memory generator,
photographic faces unless ``--look plain``, with ``--ablate`` / ``--backgrounds`` as ``train.stn``'s; a
built TFDS dataset by name or directory; a folder of photographs in identity sub-folders, built
into ``--data_dir`` on first use, see ``jface.data.sources``). Sources open before the work
directory is locked or written: one that cannot be used is a one-line error and exit status 2.
Multi-host: ``--coordinator
host:port --num_processes N --process_id i`` (automatic on Cloud TPU VMs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jface import cli
from jface import training as common
from jface.data.detect import DetectorMissingError
from jface.data.errors import DataSourceError
from jface.errors import ModelFileError
from jface.training.checkpoint import (
    CheckpointError,
    CheckpointLayoutError,
    RunFormatError,
    WorkdirBusyError,
    WorkdirLock,
)
from jface.training.deca import (
    STAGES,
    Config,
    evaluate,
    finished_steps,
    format_saved_metrics,
    prepare_data,
    report_finished,
    train,
    validate_config,
)
from jface.training.loop import CheckpointWriteError
from jface.training.runs import refuse_busy_workdir

__all__ = ["Config", "STAGES", "preset", "parse_args", "main"]


def preset(name: str) -> Config:
    """The named presets: ``default`` (CPU quickstart), ``paper`` (DECA's), ``tiny`` (tests)."""
    if name == "paper":
        return Config(encoder="full", num_identities=0, workdir="runs/deca_paper")
    if name == "default":
        return Config(
            # 768 identities x 4 generated at 112 px (the render size; half the cost of 224), a
            # 128-image held-out split; the encoders see 64 px (5x cheaper per step than 224),
            # which buys a wider encoder and 6000 pretraining steps of 32 in the CPU budget
            num_identities=768, eval_identities=32, image_size=112, render_size=112,
            encoder_input_size=64, encoder_width=16, encoder_hidden=256,
            learning_rate=3e-3, lr_schedule="cosine", pretrain_steps=6000, coarse_steps=40, detail_steps=120,
            # the coarse stage fine-tunes the pretrained encoder: at 3e-3 its fresh Adam state
            # undoes part of the pretraining (held-out NME ratio 0.46 -> 0.48-0.50); ~1e-3 keeps it
            stage_lr_scale=(1.0, 0.33, 1.0),
            pretrain_batch=(32, 1), coarse_batch=(4, 2), detail_batch=(2, 2),
            # F_d from scratch in 120 steps: DECA's torch-default init lets the eps-0.8 BNs shrink
            # the signal ~100x before the output conv, and the soft-symmetry sum (0.005 and 5e-4
            # alike) outweighs the photometric gradient; with either, the detail stage learns
            # nothing in this budget (BUILD_NOTES, train.deca)
            detail_init="he", detail_generator="small", w_sym=0.0,
            checkpoint_every=500, log_every=50, image_every=0)
    if name == "tiny":
        return Config(
            num_identities=6, images_per_identity=2, eval_identities=2, eval_images_per_identity=2,
            encoder_width=4, encoder_hidden=32, encoder_input_size=64, learning_rate=1e-3, pretrain_steps=3,
            coarse_steps=2, detail_steps=2, pretrain_batch=(4, 1), coarse_batch=(2, 2), detail_batch=(2, 2),
            render_size=32, checkpoint_every=2, log_every=1, image_every=0, eval_batch=4,
            # the plain look: the tests' runs compile its one small program, not the photo look's four
            look="plain", workdir="runs/deca_tiny")
    raise ValueError(f"preset: expected 'default', 'paper' or 'tiny', got {name!r}")


def parse_args(argv) -> tuple:
    """``(args, config)``: the preset with ``--set k=v`` / ``--key v`` overrides, validated."""
    parser = cli.ArgumentParser(prog="python -m train.deca", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval", default=None, metavar="WORKDIR")
    parser.add_argument("--json", default=None, metavar="OUT", help="with --eval: write the metrics as JSON")
    parser.add_argument("--no_compilation_cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (also: JFACE_COMPILATION_CACHE=0)")
    common.add_distributed_args(parser)
    args, rest = parser.parse_known_args(argv)
    args.local_device_ids = common.parse_device_ids(args.local_device_ids)
    config = common.apply_overrides(preset(args.preset), common.override_pairs(args.set, rest),
                                    flags=list(parser._option_string_actions))
    return args, validate_config(config)


#: Mistakes of the user or the machine that end ``main`` with one line and exit status 2.
USER_ERRORS = (DataSourceError, DetectorMissingError, RunFormatError, CheckpointError, CheckpointLayoutError,
               CheckpointWriteError, ModelFileError, FileNotFoundError, WorkdirBusyError, NotADirectoryError)


def main(argv=None) -> int:
    """The command line (module docstring). A user's mistake (a flag, a preset, a missing or refused
    file, a workdir that cannot be used, a disk that refuses a checkpoint) is one line on stderr and
    exit status 2; a non-finite loss exits 3, a signal 143."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config = parse_args(argv)
    except ValueError as exc:
        print(f"train.deca: {exc}", file=sys.stderr)
        return 2
    return cli.run("train.deca", lambda: _run(args, config), USER_ERRORS)


def _run(args, config) -> int:
    common.initialize_from_args(args)
    if not args.no_compilation_cache:
        common.enable_compilation_cache()  # a second run compiles nothing it compiled before
    try:
        if args.eval:
            if config.eval_data == "generated" and not args.json:
                saved = Path(args.eval) / "metrics.json"
                if saved.is_file():  # the metrics the run wrote at its end
                    for line in format_saved_metrics(json.loads(saved.read_text())):
                        print(line)
                    return 0
            evaluate(args.eval, config.eval_data, data_dir=config.data_dir or None, json_path=args.json)
            return 0
        cli.check_output_dir(config.workdir, "--workdir", create=False)
        if common.is_main_process():
            refuse_busy_workdir(config.workdir)  # a live run there: say so before making any data
        steps = finished_steps(config)  # before any data is made: a finished run only reports
        if steps is not None:
            report_finished(config, steps)
            return 0
        data = prepare_data(config)  # before the lock: a bad source leaves the workdir untouched
        with WorkdirLock(config.workdir):
            train(config, data=data)
    except common.NonFiniteLossError as exc:
        print(f"train.deca: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
