"""Command line for model files: ``python -m jface.models COMMAND ...``.

Commands:
  info FILE                     what the file is, its fields, shapes and dtypes
  convert FILE -o model.npz     an original file (FLAME pkl / pkl-named npz, BFM 2009 .mat) ->
                                the project's own npz format
  prepare-stn --bfm .. --expression .. --uv .. --map .. [--landmarks NAME=FILE.anl ..] -o stn_model.npz
                                the original prepareExpressionBFM + resampleModel
  add-landmarks MODEL.npz --landmarks NAME=FILE.anl [-o OUT.npz]
                                attach landmark sets to a prepared 3DMM-STN model

Mistakes (a missing or unreadable file, an unknown flag, an output path that cannot be written)
are one line on stderr and exit status 2.

Adding a command: one entry in :data:`COMMANDS`, ``name: (help, "module:function")``, where
``function(parser)`` adds its arguments to the ``argparse`` sub-parser and returns
``run(args) -> int``. Commands of other modules (the default models' ``regenerate`` / ``show``)
are imported only when chosen.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jface import cli
from jface.errors import ModelFileError
from jface.files.mat import load_mat
from jface.files.npy import read_npy_header
from jface.files.npz import npz_member_names, read_npz
from jface.files.obj import load_obj
from jface.files.paths import read_file_bytes
from jface.models import loaders, prepare, store
from jface.models.morphable import MorphableModel

COMMANDS = {
    "info": ("describe a model file (type, fields, shapes)", "jface.models.__main__:info_command"),
    "convert": ("convert an original model file to the jface npz format",
                "jface.models.__main__:convert_command"),
    "prepare-stn": ("build the 3DMM-STN model from BFM 2009 + 3DDFA expression files",
                    "jface.models.__main__:prepare_stn_command"),
    "add-landmarks": ("attach landmark sets (.anl files) to a 3DMM-STN model npz",
                      "jface.models.__main__:add_landmarks_command"),
    "regenerate": ("rebuild the cached synthetic default models",
                   "jface.models.defaults.cli:regenerate_command"),
    "show": ("draw the synthetic default models as PNGs", "jface.models.defaults.cli:show_command"),
}


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(argv=None):
    """The argparse parser; only the command named in ``argv`` is configured (lazy import)."""
    parser = cli.ArgumentParser(
        prog="python -m jface.models", description="Inspect, convert and prepare face model files."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    runners = {}
    for name, (help_text, target) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            runners[name] = _resolve(target)(p)
    return parser, runners


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, runners = build_parser(argv)
    args = parser.parse_args(argv)
    return cli.run("python -m jface.models", lambda: runners[args.command](args), (ModelFileError,))


# ----------------------------------------------------------------------------------------------
# info


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype} {tuple(value.shape)}"
    return repr(value)[:60]


def identify(path) -> tuple[str, dict]:
    """(kind, {field: description}) for a model file, read with the safe loaders."""
    path = Path(path)
    data_head = read_file_bytes(path)[:600]
    suffix = path.suffix.lower()
    if data_head.startswith(b"PK"):
        if store.META_KEY in npz_member_names(path):
            meta = store.read_metadata(path)
            fields = {k: f"{v['dtype']} {tuple(v['shape'])}" for k, v in meta["arrays"].items()}
            fields["(static)"] = str(meta.get("static"))
            fields["(sources)"] = ", ".join(s["name"] for s in meta.get("sources", [])) or "-"
            kind = f"jface model file v{meta['version']}: {meta['model_type']} ({meta['units']})"
            return kind, fields
        arrays = read_npz(path)
        fields = {k: _describe(v) for k, v in arrays.items()}
        if "v_template" in arrays and "shapedirs" in arrays:
            return "FLAME arrays with generic_model.pkl field names (npz)", fields
        if "static_lmk_faces_idx" in arrays:
            return "DECA landmark embedding (npz)", fields
        return "npz archive", fields
    if data_head.startswith(b"\x93NUMPY"):
        header, _ = read_npy_header(read_file_bytes(path), path)
        if header["descr"] == "|O":
            emb = loaders.load_landmark_embedding(path)
            return "DECA landmark_embedding.npy (pickled dict, torch tensors rebuilt)", {
                k: _describe(v) for k, v in emb.items()}
        return "npy array", {"array": f"{header['descr']} {header['shape']}"}
    if data_head.startswith(b"\x80"):
        fields = loaders.read_flame_fields(path)
        kind = "FLAME generic_model.pkl" if "shapedirs" in fields else "pickle"
        return kind + " (read safely)", {k: _describe(v) for k, v in fields.items()}
    if suffix == ".mat" or data_head.startswith(b"MATLAB"):
        raw = load_mat(path)
        names = {k for k in raw if not k.startswith("__")}
        fields = {k: _describe(raw[k]) for k in sorted(names)}
        if {"shapeMU", "shapePC", "shapeEV", "tl"} <= names:
            bfm = loaders.load_bfm2009(path)
            kind = (f"BFM 2009 01_MorphableModel.mat: {bfm['mean'].shape[0]} vertices, "
                    f"{bfm['shape_basis'].shape[2]} shape PCs, {bfm['faces'].shape[0]} faces, µm"
                    + (", with texture" if "tex_mean" in bfm else ""))
        elif "w_exp" in names:
            e = loaders.load_tddfa_expression(path)
            kind = (f"3DDFA Model_Expression.mat: {e['w_exp'].shape[0]} vertices, "
                    f"{e['w_exp'].shape[2]} expression PCs, µm")
        elif "map_tddfa_to_basel" in names:
            m = loaders.load_map_tddfa_to_basel(path)
            kind = f"map_tddfa_to_basel.mat: {m.shape[0]} 0-based BFM indices"
        elif names == {"UV"}:
            kind = f"BFM_UV.mat: {loaders.load_bfm_uv(path).shape[0]} per-vertex UVs in [0, 1]"
        elif {"Images", "Labels"} <= names:
            kind = "3DMM-STN demodata.mat"
        else:
            kind = "MATLAB .mat file"
        return kind, fields
    if suffix == ".obj":
        obj = load_obj(path)
        return "Wavefront OBJ", {k: _describe(v) for k, v in obj.items() if k != "source"}
    if suffix == ".anl":
        idx = loaders.load_anl(path)
        return f"3DMM-STN landmark file: {idx.shape[0]} indices (1-based in file)", {
            "indices (0-based)": " ".join(map(str, idx[:10])) + (" ..." if len(idx) > 10 else "")}
    raise ModelFileError(
        path, "unrecognised file type (expected .mat, .pkl, .npy, .npz, .obj, .anl)"
    )


def info_command(parser):
    parser.add_argument("file", help="a model or data file")

    def run(args):
        kind, fields = identify(args.file)
        print(f"{args.file}: {kind}")
        width = max((len(k) for k in fields), default=0)
        for key, desc in fields.items():
            print(f"  {key:<{width}}  {desc}")
        return 0

    return run


# ----------------------------------------------------------------------------------------------
# convert


def convert_file(path, output, *, landmark_embedding=None, n_shape=None):
    """Convert a FLAME pkl / pkl-named npz or a BFM 2009 .mat to the jface npz format."""
    path = Path(path)
    head = read_file_bytes(path)[:128]
    sources = [path]
    if head.startswith(b"\x80") or head.startswith(b"PK"):
        model = loaders.load_flame(path, landmark_embedding, n_shape=n_shape)
        if landmark_embedding is not None and not isinstance(landmark_embedding, dict):
            sources.append(Path(landmark_embedding))
    elif path.suffix.lower() == ".mat" or head.startswith(b"MATLAB"):
        bfm = loaders.load_bfm2009(path)
        n = bfm["mean"].shape[0]
        kwargs = {}
        if "tex_mean" in bfm:
            # BFM colours are 0-255; MorphableModel albedo is in [0, 1] with N(0, 1) coefficients.
            kwargs["albedo_mean"] = jnp.asarray(bfm["tex_mean"] / 255.0)
            kwargs["albedo_basis"] = jnp.asarray(bfm["tex_basis"] * (bfm["tex_ev"] / 255.0))
        model = MorphableModel(
            mean=jnp.asarray(bfm["mean"]),
            shape_basis=jnp.asarray(bfm["shape_basis"] * bfm["shape_ev"]),
            expression_basis=jnp.zeros((n, 3, 0), dtype=bfm["mean"].dtype),
            faces=jnp.asarray(bfm["faces"]),
            units="um",
            **kwargs,
        )
    else:
        raise ModelFileError(path, "convert understands FLAME .pkl/.npz and BFM 2009 .mat files")
    return store.save_model(model, output, sources=sources)


def convert_command(parser):
    parser.add_argument("file", help="generic_model.pkl, a FLAME npz, or 01_MorphableModel.mat")
    parser.add_argument("-o", "--output", required=True, help="output .npz")
    parser.add_argument("--landmark-embedding", help="DECA landmark_embedding.npy (FLAME only)")
    parser.add_argument("--n-shape", type=int, default=None,
                        help="identity columns of shapedirs (FLAME; default 300 of 400)")

    def run(args):
        t0 = time.perf_counter()
        out = convert_file(args.file, args.output, landmark_embedding=args.landmark_embedding,
                           n_shape=args.n_shape)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
        return 0

    return run


# ----------------------------------------------------------------------------------------------
# prepare-stn


def prepare_stn_command(parser):
    parser.add_argument("--bfm", required=True, help="BFM 2009 01_MorphableModel.mat")
    parser.add_argument("--expression", required=True, help="3DDFA Model_Expression.mat")
    parser.add_argument("--uv", required=True, help="BFM_UV.mat")
    parser.add_argument("--map", required=True, help="map_tddfa_to_basel.mat")
    parser.add_argument("-o", "--output", required=True, help="output .npz (jface format)")
    parser.add_argument("--res", type=int, default=112, help="UV grid size (default 112)")
    parser.add_argument("--n-shape", type=int, default=5, help="identity components (default 5)")
    parser.add_argument("--n-expression", type=int, default=5,
                        help="expression components (default 5)")
    parser.add_argument("--landmarks", action="append", default=[], metavar="NAME=FILE.anl",
                        help="attach grid landmarks from a .anl file indexing the res x res grid, "
                             "e.g. aflw21=Landmarks21_112.anl (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")

    def run(args):
        t0 = time.perf_counter()

        def say(message):
            if not args.quiet:
                print(f"[{time.perf_counter() - t0:7.1f} s] {message}", flush=True)

        landmark_files = _landmark_files(parser, args.landmarks)
        cli.check_output_file(args.output, "-o")
        say(f"reading {args.bfm}")
        bfm = loaders.load_bfm2009(args.bfm)
        say(f"reading {args.expression}")
        expression = loaders.load_tddfa_expression(args.expression)
        say(f"reading {args.uv} and {args.map}")
        uv = loaders.load_bfm_uv(args.uv, n_vertices=bfm["mean"].shape[0])
        index = loaders.load_map_tddfa_to_basel(args.map, n_vertices=bfm["mean"].shape[0])
        landmarks = _read_landmarks(parser, landmark_files, args.res ** 2, f"the {args.res}x{args.res} grid",
                                    args.res)
        model = prepare.prepare_stn_model(bfm, expression, uv, index, res=args.res, n_shape=args.n_shape,
                                  n_expression=args.n_expression, progress=say)
        model = _with_landmarks(model, landmarks)
        sources = [args.bfm, args.expression, args.uv, args.map, *landmark_files.values()]
        say(f"writing {args.output}")
        out = store.save_model(model, args.output, sources=sources,
                             extra={"prepared_with": {"res": args.res, "n_shape": args.n_shape,
                                                      "n_expression": args.n_expression}})
        say(f"done: {model.num_vertices} vertices, {model.num_shape}+{model.num_expression} "
            f"components -> {out}")
        print(landmark_summary(model, out), flush=True)
        return 0

    return run


def _landmark_files(parser, items) -> dict:
    """``--landmarks NAME=FILE.anl`` items -> ``{name: file}`` (a malformed item: a usage error)."""
    files = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            parser.error(f"--landmarks expects NAME=FILE.anl, got {item!r}")
        files[name] = file
    return files


def _read_landmarks(parser, files: dict, num_vertices: int, grid: str, res: int) -> dict:
    """Each ``.anl`` file's 0-based indices, checked against the model's vertex count."""
    landmarks = {name: loaders.load_anl(file) for name, file in files.items()}
    for name, idx in landmarks.items():
        if idx.size and (idx.max() >= num_vertices or idx.min() < 0):
            parser.error(f"--landmarks {name}: index {idx.max() + 1} (1-based) exceeds {grid}; use the "
                         f"*_{res}.anl file")
    return landmarks


def _with_landmarks(model, landmarks: dict):
    if not landmarks:
        return model
    merged = dict(model.landmarks or {})
    merged.update({k: jnp.asarray(v) for k, v in landmarks.items()})
    return model.replace(landmarks=merged)


def landmark_summary(model, path) -> str:
    """One line: which landmark sets ``path`` holds, or that it holds none and how to add the ones
    ``python -m jface.stn.demo`` and ``train.stn`` need."""
    sets = dict(model.landmarks or {})
    if sets:
        listed = ", ".join(f"{name} ({len(np.asarray(idx))} points)" for name, idx in sorted(sets.items()))
        return f"landmark sets in {path}: {listed}"
    return (f"landmark sets in {path}: none; python -m jface.stn.demo and train.stn need aflw21: pass "
            f"--landmarks aflw21={prepare.landmark_file_name('aflw21', model)} here, or run python -m jface.models "
            f"add-landmarks {path} --landmarks aflw21={prepare.landmark_file_name('aflw21', model)}")


# ----------------------------------------------------------------------------------------------
# add-landmarks


def add_landmarks_command(parser):
    parser.add_argument("model", help="a 3DMM-STN model npz (prepare-stn's output)")
    parser.add_argument("--landmarks", action="append", default=[], required=True, metavar="NAME=FILE.anl",
                        help="a landmark set from a .anl file indexing the model's grid, e.g. "
                             "aflw21=Landmarks21_112.anl (repeatable; replaces a set of that name)")
    parser.add_argument("-o", "--output", help="output .npz (default: rewrite MODEL in place, atomically)")

    def run(args):
        files = _landmark_files(parser, args.landmarks)
        output = cli.check_output_file(args.output or args.model, "-o")
        model = store.load_model(args.model)
        if not isinstance(model, MorphableModel):
            raise ModelFileError(args.model, f"expected a 3DMM-STN MorphableModel, got a {type(model).__name__}")
        res = model.grid_hw[0] if model.grid_hw is not None else 0
        grid = f"the {res}x{res} grid" if res else f"the model's {model.num_vertices} vertices"
        model = _with_landmarks(model, _read_landmarks(parser, files, model.num_vertices, grid, res or 112))
        meta = store.read_metadata(args.model)
        sources = [*meta.get("sources", []), *files.values()]
        out = store.save_model(model, output, sources=sources, licence=meta.get("licence"), extra=meta.get("extra"))
        print(landmark_summary(model, out), flush=True)
        return 0

    return run


if __name__ == "__main__":
    sys.exit(main())
