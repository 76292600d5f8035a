"""``python -m jface.reconstruct.video VIDEO_OR_FOLDER -o OUT``: track a face over a video.

The input is a video file (read through the optional ``imageio-ffmpeg``: ``pip install
imageio-ffmpeg``) or a folder of frames (image files, sorted by name). Each frame's 68 landmarks
come from ``--landmarks`` (a ``(T, 68, 2|3)`` ``.npy`` of 0-based pixels, x = column, y = row), else
from a side file beside the frame (``.pts`` / ``.txt`` / ``.npy`` / ``.mat``,
:func:`jface.data.detect.read_side_landmarks`), else from the optional mediapipe detector
(:class:`jface.data.detect.MediapipeDetector`, its face-oval polygon also the skin mask); a frame
without a face is tracked by its photometric and smoothness terms alone. Frames are cropped as
DECA's test crop (:func:`jface.data.crops.deca_crop_transform`) with the box centre and size
smoothed over 5 frames, at ``--size`` pixels, and tracked by :func:`jface.fit.track_flame` (one
shape and albedo for the video; per-frame expression, pose, camera and light; temporal
smoothness; chunks with warm starts), from the mean face or from ``--weights``' encoder codes.

Under OUT:

* ``flame_params.npz``: FLAME 2020's layout (:func:`jface.export.pad_flame_parameters`): ``shape``
  ``(300,)`` once, per frame ``expression (T, 100)``, ``global_pose``, ``neck_pose``, ``jaw_pose``
  ``(T, 3)``, ``eye_pose (T, 6)``, ``full_pose (T, 15)``; DECA's ``cam (T, 3)``, ``light (T, 9,
  3)``, ``tex (50,)``; the crop of every frame (``crop_scale (T,)``, ``crop_offset (T, 2)``: crop
  pixel = scale x frame pixel + offset, at ``crop_size``); ``frame`` names;
  ``flame_params.json``: the same, one record per frame;
* ``overlay.mp4`` (imageio-ffmpeg) or ``overlay/<frame>.png``: the render (fitted albedo x light)
  at 60 % over every frame, the input landmarks green and the model's red;
* ``meshes/<frame>.obj``: the FLAME mesh of every ``--mesh-every``-th frame (world coordinates).

Exit status 0 on success, 2 for a usage or input error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jface import export, flame
from jface.data.crops import CropTransform, landmark_box, warp_image
from jface.data.detect import DetectorMissingError, MediapipeDetector, face_oval_mask, read_side_landmarks, side_file
from jface.data.real import IMAGE_SUFFIXES, ImageReadError, read_image
from jface.deca import encode
from jface.files.weights import load_variables
from jface.fit import FitConfig, TrackConfig, evaluate, landmarks_2d, track_flame
from jface.models import default_flame_model, load_flame, load_model
from jface.training.deca import load_run

__all__ = ["VideoInputError", "read_frames", "frame_landmarks", "crop_frames", "load_encoder", "track_video",
           "measure_frames", "overlay_frame", "write_outputs", "run", "main"]

VIDEO_EXTRA = "pip install 'jface[video]' (imageio-ffmpeg)"
_CROP_SCALE = 1.1 * 1.25  # DECA's TestData box enlargement


class VideoInputError(ValueError):
    """A user input the program cannot use (missing file, no frames, no face, bad flag value)."""


# --- frames and landmarks ------------------------------------------------------------------------

def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise VideoInputError(f"reading or writing a video file needs the optional imageio-ffmpeg ({VIDEO_EXTRA}); "
                              f"or give a folder of frames") from err
    return imageio_ffmpeg


def read_frames(source, *, every: int = 1, max_frames: int | None = None):
    """``(frames [uint8 (H, W, 3)], names [str], fps, paths [Path] or None)`` of a video file or a
    folder of image files (sorted by name; ``paths`` then lists them for side files). ``every``: keep
    every n-th frame; ``max_frames``: stop after that many kept frames."""
    source = Path(source)
    if every < 1:
        raise VideoInputError(f"--every: expected >= 1, got {every}")
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths = paths[::every][:max_frames]
        if not paths:
            raise VideoInputError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        frames = []
        for path in paths:
            try:
                frames.append(read_image(path))
            except ImageReadError as err:
                raise VideoInputError(str(err)) from None
        if len({f.shape for f in frames}) != 1:
            raise VideoInputError(f"{source}: the frames differ in size ({sorted({f.shape for f in frames})})")
        return frames, [p.name for p in paths], 25.0, paths
    if not source.is_file():
        raise VideoInputError(f"{source}: no such video file or folder of frames")
    ffmpeg = _ffmpeg()
    try:
        reader = ffmpeg.read_frames(str(source))
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for index, data in enumerate(reader):
            if index % every == 0:
                frames.append(np.frombuffer(data, np.uint8).reshape(height, width, 3).copy())
                if max_frames is not None and len(frames) >= max_frames:
                    break
        reader.close()
    except (OSError, RuntimeError, StopIteration) as err:
        raise VideoInputError(f"{source}: cannot read as a video ({err})") from None
    if not frames:
        raise VideoInputError(f"{source}: the video has no frames")
    return frames, [f"{i:06d}" for i in range(len(frames))], float(meta.get("fps") or 25.0) / every, None


def frame_landmarks(frames, paths=None, *, landmarks_file=None, detector: str = "auto", log=print):
    """Per frame 68 landmarks ``(T, 68, 3)`` (0-based pixels and a weight: 0 where no face was
    found) and skin masks ``(T, H, W)`` (or None): ``landmarks_file`` first, else side files, else
    the mediapipe detector (``detector`` ``'auto'``: when installed; ``'mediapipe'``: required;
    ``'none'``: never)."""
    count = len(frames)
    out = np.zeros((count, 68, 3))
    masks = None
    if landmarks_file is not None:
        try:
            given = np.load(landmarks_file)
        except (OSError, ValueError) as err:
            raise VideoInputError(f"--landmarks {landmarks_file}: cannot read as a .npy array ({err})") from None
        if given.ndim != 3 or given.shape[0] != count or given.shape[1] != 68 or given.shape[2] not in (2, 3):
            raise VideoInputError(f"--landmarks {landmarks_file}: expected ({count}, 68, 2|3) pixels, "
                                  f"got {given.shape}")
        out[..., :2] = given[..., :2]
        out[..., 2] = given[..., 2] if given.shape[2] == 3 else 1.0
        out[~np.all(np.isfinite(out), axis=(1, 2))] = 0.0
        return out, masks
    missing = []
    for index in range(count):
        side = side_file(paths[index]) if paths is not None else None
        if side is not None:
            try:
                out[index, :, :2] = read_side_landmarks(side)[:, :2]
            except ValueError as err:
                raise VideoInputError(str(err)) from None
            out[index, :, 2] = 1.0
        else:
            missing.append(index)
    if missing and detector != "none":
        try:
            found = MediapipeDetector(max_faces=1)
        except DetectorMissingError as err:
            if detector == "mediapipe":
                raise VideoInputError(str(err)) from None
            log(f"no detector ({err}); {len(missing)} frames without side files are tracked without landmarks")
            found = None
        if found is not None:
            masks = np.ones((count,) + frames[0].shape[:2], np.float32)
            for index in missing:
                faces = found(frames[index])
                if faces:
                    out[index, :, :2] = faces[0].landmarks68
                    out[index, :, 2] = 1.0
                    masks[index] = face_oval_mask(faces[0], frames[index].shape[:2])
            found.close()
    return out, masks


def crop_frames(frames, landmarks, masks=None, *, size: int = 224, window: int = 5):
    """DECA's test crop of every frame at ``size`` pixels, the landmark box's centre and size
    averaged over ``window`` frames (frames without landmarks take their nearest neighbour's box).

    Returns ``crops (T, S, S, 3)`` float32 in [0, 1], ``ndc (T, 68, 3)`` (DECA NDC p / S * 2 - 1,
    the weight column kept), ``masks (T, S, S)`` or None, and the :class:`CropTransform` list."""
    found = landmarks[:, :, 2].sum(axis=1) > 0
    if not found.any():
        raise VideoInputError("no face found in any frame (give landmark side files or install the detector: "
                              "pip install 'jface[detect]')")
    boxes = np.zeros((len(frames), 3))
    rows = np.flatnonzero(found)
    for index in range(len(frames)):
        source = index if found[index] else rows[np.abs(rows - index).argmin()]
        centre, old_size = landmark_box(landmarks[source, :, :2])
        boxes[index] = [centre[0], centre[1], old_size]
    boxes = ndimage.uniform_filter1d(boxes, size=min(window, len(frames)), axis=0, mode="nearest")
    crops, ndc, out_masks, transforms = [], [], [], []
    for index, frame in enumerate(frames):
        crop_size = int(boxes[index, 2] * _CROP_SCALE)
        scale = (size - 1) / crop_size
        transform = CropTransform(scale=scale, offset=-(boxes[index, :2] - crop_size / 2.0) * scale)
        crops.append(warp_image(np.asarray(frame, np.float64) / 255.0, transform, size))
        points = transform.apply(landmarks[index, :, :2]) / size * 2.0 - 1.0
        ndc.append(np.concatenate([points, landmarks[index, :, 2:]], axis=1))
        if masks is not None:
            out_masks.append(warp_image(masks[index], transform, size) > 0.5)
        transforms.append(transform)
    crops = np.clip(np.stack(crops), 0.0, 1.0).astype(np.float32)
    out_masks = np.stack(out_masks).astype(np.float32) if masks is not None else None
    return crops, np.stack(ndc).astype(np.float32), out_masks, transforms


# --- tracking -------------------------------------------------------------------------------------

def load_encoder(weights, model):
    """``--weights``: converted DECA weights (a file) or a ``train.deca`` run folder -> a function
    ``crops (B, 224, 224, 3) in [0, 1] -> codes``."""
    path = Path(weights)
    if path.is_dir():
        try:
            loaded = load_run(path, model=model)
        except (ValueError, FileNotFoundError) as err:
            raise VideoInputError(f"--weights {path}: {err}") from None
        return loaded.encode
    if not path.is_file():
        raise VideoInputError(f"--weights {path}: no such file or folder")
    try:
        tree = load_variables(path, kind="deca")
    except (ValueError, OSError) as err:
        raise VideoInputError(f"--weights {path}: {err}") from None
    if "E_flame" not in tree:
        raise VideoInputError(f"--weights {path}: expected DECA weights with an 'E_flame' entry, got {sorted(tree)}")
    params = jax.tree_util.tree_map(jnp.asarray, tree)
    return jax.jit(lambda crops: encode(params, crops))


def track_video(model, crops, ndc, masks, config: TrackConfig, *, encoder=None, log=print):
    """:func:`jface.fit.track_flame` on the crops (from ``encoder``'s codes when given)."""
    init = None
    if encoder is not None:
        batch = []
        for begin in range(0, len(crops), config.chunk):
            part = jnp.asarray(crops[begin:begin + config.chunk])
            if part.shape[1] != 224:
                part = jax.image.resize(part, (part.shape[0], 224, 224, 3), "linear", antialias=True)
            batch.append({k: np.asarray(v) for k, v in encoder(part).items()})
        init = {k: np.concatenate([b[k] for b in batch]) for k in batch[0]}
        init = {k: v for k, v in init.items() if k in ("shape", "tex", "exp", "pose", "cam", "light")}
    start = time.perf_counter()

    def progress(done, total):
        log(f"tracking: {done}/{total} chunk programs ({time.perf_counter() - start:.1f} s)")

    return track_flame(model, crops, ndc, config, masks=masks, init=init, progress=progress)


# --- outputs --------------------------------------------------------------------------------------

def measure_frames(model, codes, crops, ndc, masks, config: TrackConfig) -> dict:
    """:func:`jface.fit.evaluate` of every frame in chunk-sized batches (one compile, the tracker's
    batch size), plus the model landmarks: ``{rendered_images (T, S, S, 3), alpha_images,
    landmarks2d (T, 68, 2) NDC, landmark_error_px (T,), photometric_error (T,)}``."""
    chunk, count = config.chunk, len(crops)
    keys = ("rendered_images", "alpha_images", "landmark_error_px", "photometric_error")
    parts = {k: [] for k in keys + ("landmarks2d",)}
    for begin in range(0, count, chunk):
        index = np.minimum(np.arange(begin, begin + chunk), count - 1)
        part = {k: np.asarray(v)[index] for k, v in codes.items()}
        out = evaluate(model, part, crops[index], ndc[index], masks=None if masks is None else masks[index],
                       config=config.fit)
        keep = min(chunk, count - begin)
        for k in keys:
            parts[k].append(out[k][:keep])
        parts["landmarks2d"].append(np.asarray(landmarks_2d(model, {k: part[k] for k in GEOMETRY}))[:keep])
    return {k: np.concatenate(v) for k, v in parts.items()}


GEOMETRY = ("shape", "exp", "pose", "cam")


@jax.jit
def _vertices(model, codes):
    """FLAME's vertices ``(B, V, 3)`` (world) of the code dict's shape, exp and pose."""
    return jax.vmap(lambda s, e, p: flame.forward(model, s, e, p)["vertices"])(codes["shape"], codes["exp"],
                                                                               codes["pose"])


def _dots(image, points, colour, radius=1):
    height, width = image.shape[:2]
    for x, y in np.round(points).astype(int):
        image[max(y - radius, 0):min(y + radius + 1, height), max(x - radius, 0):min(x + radius + 1, width)] = colour


def overlay_frame(frame, render, alpha, transform: CropTransform, landmarks=None, model_landmarks=None,
                  opacity: float = 0.6):
    """The crop-space ``render (S, S, 3)`` / ``alpha (S, S, 1)`` warped back onto ``frame (H, W, 3)``
    uint8 at ``opacity``; ``landmarks`` (input, green) and ``model_landmarks`` (red) in frame
    pixels. Returns uint8 ``(H, W, 3)``."""
    height, width = frame.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    crop_xy = transform.apply(np.stack([xs, ys], axis=-1))
    coords = [crop_xy[..., 1], crop_xy[..., 0]]
    cover = opacity * ndimage.map_coordinates(alpha[..., 0], coords, order=1, mode="constant", cval=0.0)
    colour = np.stack([ndimage.map_coordinates(render[..., c], coords, order=1, mode="constant") for c in range(3)],
                      axis=-1)
    out = frame / 255.0 * (1.0 - cover[..., None]) + np.clip(colour, 0.0, 1.0) * cover[..., None]
    out = export.to_uint8(out)
    radius = max(1, round(min(height, width) / 300))
    if landmarks is not None:
        _dots(out, landmarks, (0, 255, 0), radius)
    if model_landmarks is not None:
        _dots(out, model_landmarks, (255, 0, 0), radius)
    return out


def write_outputs(out_dir, model, frames, names, fps, codes, measures, landmarks, transforms, config: TrackConfig,
                  *, mesh_every: int = 1, video: bool = True, log=print) -> dict:
    """The files of the module docstring (``measures``: :func:`measure_frames`); returns
    ``{'params', 'overlay', 'meshes'}`` paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count, size = len(frames), measures["rendered_images"].shape[1]
    padded = [export.pad_flame_parameters(codes["shape"][t], codes["exp"][t], codes["pose"][t]) for t in range(count)]
    params = {k: np.stack([p[k] for p in padded]) for k in padded[0]}
    params["shape"] = params["shape"][0]
    params.update(cam=np.asarray(codes["cam"], np.float64), light=np.asarray(codes["light"], np.float64),
                  tex=np.asarray(codes["tex"][0], np.float64), crop_size=np.int64(size),
                  crop_scale=np.array([t.scale for t in transforms]),
                  crop_offset=np.stack([np.asarray(t.offset, np.float64) for t in transforms]),
                  frame=np.array(names))
    np.savez(out_dir / "flame_params.npz", **params)
    per_frame = ("expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose", "full_pose", "cam", "light",
                 "crop_scale", "crop_offset")
    record = {"shape": params["shape"], "tex": params["tex"], "crop_size": size, "fps": fps,
              "frames": [{"frame": names[t], "landmarks_found": bool(landmarks[t, :, 2].sum() > 0),
                          **{k: params[k][t] for k in per_frame}} for t in range(count)]}
    export.save_json(out_dir / "flame_params.json", record)
    paths = {"params": out_dir / "flame_params.npz"}

    overlays = []
    for t in range(count):
        model_px = transforms[t].inverse((measures["landmarks2d"][t] + 1.0) * size / 2.0)
        found = landmarks[t, :, :2] if landmarks[t, :, 2].sum() > 0 else None
        overlays.append(overlay_frame(frames[t], measures["rendered_images"][t], measures["alpha_images"][t],
                                      transforms[t], found, model_px))
    paths["overlay"] = _write_overlay(out_dir, overlays, names, fps, video, log)

    paths["meshes"] = []
    if mesh_every:
        (out_dir / "meshes").mkdir(exist_ok=True)
        faces = np.asarray(model.faces)
        keep = list(range(0, count, mesh_every))
        for begin in range(0, len(keep), config.chunk):
            index = np.asarray(keep[begin:begin + config.chunk])
            padded_index = np.concatenate([index, np.full(config.chunk - len(index), index[-1])])
            verts = np.asarray(_vertices(model, {k: np.asarray(codes[k])[padded_index] for k in GEOMETRY}))
            for row, t in enumerate(index):
                path = out_dir / "meshes" / f"{Path(names[t]).stem}.obj"
                export.write_obj(path, verts[row], faces)
                paths["meshes"].append(path)
    return paths


def _write_overlay(out_dir, overlays, names, fps, video, log):
    if video:
        try:
            ffmpeg = _ffmpeg()
        except VideoInputError as err:
            log(f"{err}: writing PNG frames instead")
        else:
            height, width = overlays[0].shape[:2]
            even = [np.pad(o, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") for o in overlays]
            path = out_dir / "overlay.mp4"
            writer = ffmpeg.write_frames(str(path), (even[0].shape[1], even[0].shape[0]), fps=fps, macro_block_size=1)
            writer.send(None)
            for frame in even:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
            return path
    folder = out_dir / "overlay"
    folder.mkdir(exist_ok=True)
    for frame, name in zip(overlays, names):
        export.save_png(folder / f"{Path(name).stem}.png", frame, (0, 255))
    return folder


# --- the program ----------------------------------------------------------------------------------

def run(source, out_dir, *, model=None, config: TrackConfig | None = None, weights=None, landmarks_file=None,
        detector: str = "auto", every: int = 1, max_frames: int | None = None, mesh_every: int = 1,
        video: bool = True, log=print) -> dict:
    """The program's work (the module docstring); returns a summary dict."""
    model = default_flame_model() if model is None else model
    config = TrackConfig() if config is None else config
    start = time.perf_counter()
    frames, names, fps, paths = read_frames(source, every=every, max_frames=max_frames)
    log(f"{len(frames)} frames of {frames[0].shape[1]} x {frames[0].shape[0]} from {source}")
    landmarks, masks = frame_landmarks(frames, paths, landmarks_file=landmarks_file, detector=detector, log=log)
    found = int((landmarks[:, :, 2].sum(axis=1) > 0).sum())
    log(f"landmarks in {found} of {len(frames)} frames")
    crops, ndc, crop_masks, transforms = crop_frames(frames, landmarks, masks, size=config.fit.render_size)
    encoder = load_encoder(weights, model) if weights else None
    codes, history = track_video(model, crops, ndc, crop_masks, config, encoder=encoder, log=log)
    tracked = time.perf_counter() - start
    measures = measure_frames(model, codes, crops, ndc, crop_masks, config)
    paths_out = write_outputs(out_dir, model, frames, names, fps, codes, measures, landmarks, transforms, config,
                              mesh_every=mesh_every, video=video, log=log)
    summary = {"frames": len(frames), "frames_with_landmarks": found, "seconds_to_track": tracked,
               "landmark_error_px": float(np.mean(measures["landmark_error_px"])),
               "photometric_error": float(np.mean(measures["photometric_error"])),
               "outputs": {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths_out.items()}}
    log(f"tracked {len(frames)} frames in {tracked:.1f} s; landmark error {summary['landmark_error_px']:.2f} px "
        f"(224 crop), photometric error {summary['photometric_error']:.3f}; wrote {out_dir}")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.reconstruct.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a video file (needs imageio-ffmpeg) or a folder of frames")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--weights", help="start from an encoder: converted DECA weights or a train.deca run folder")
    parser.add_argument("--flame", help="FLAME model (generic_model.pkl or jface npz); default: default_flame_model()")
    parser.add_argument("--landmarks", help="(T, 68, 2|3) .npy of 0-based pixel landmarks, one row per frame")
    parser.add_argument("--detector", choices=("auto", "mediapipe", "none"), default="auto",
                        help="for frames without side files (auto: mediapipe when installed)")
    parser.add_argument("--steps", type=int, nargs=2, default=[100, 50], metavar=("LANDMARK", "PHOTOMETRIC"),
                        help="Adam steps of each stage per chunk")
    parser.add_argument("--size", type=int, default=224, help="crop and render size")
    parser.add_argument("--chunk", type=int, default=16, help="frames per jitted chunk (and key frames)")
    parser.add_argument("--smooth", type=float, default=1.0, help="multiplies every temporal smoothness weight")
    parser.add_argument("--every", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--mesh-every", type=int, default=1, help="write the mesh of every n-th frame (0: none)")
    parser.add_argument("--no-video", action="store_true", help="overlay as PNG frames even with imageio-ffmpeg")
    args = parser.parse_args(argv)
    try:
        if args.size < 8 or args.chunk < 2 or min(args.steps) < 0 or args.smooth < 0 or args.mesh_every < 0:
            raise VideoInputError("--size >= 8, --chunk >= 2, --steps >= 0, --smooth >= 0 and --mesh-every >= 0 "
                                  "expected")
        model = None
        if args.flame:
            if not Path(args.flame).is_file():
                raise VideoInputError(f"--flame {args.flame}: no such file")
            try:
                model = load_model(args.flame) if args.flame.endswith(".npz") else load_flame(args.flame)
            except (ValueError, OSError) as err:
                raise VideoInputError(f"--flame {args.flame}: {err}") from None
        base = TrackConfig()
        config = TrackConfig(
            fit=FitConfig(landmark_steps=args.steps[0], photometric_steps=args.steps[1], render_size=args.size),
            chunk=args.chunk, **{f"smooth_{k}": args.smooth * getattr(base, f"smooth_{k}")
                                 for k in ("pose", "exp", "cam", "light")})
        run(args.source, args.out, model=model, config=config, weights=args.weights, landmarks_file=args.landmarks,
            detector=args.detector, every=args.every, max_frames=args.max_frames, mesh_every=args.mesh_every,
            video=not args.no_video)
    except VideoInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
