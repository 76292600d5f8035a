"""jface.fit.track_flame and ``python -m jface.reconstruct.video`` on a short rendered sequence.

Six 32 x 32 frames rendered (by :func:`jface.fit.evaluate`'s program) from known codes: one shape and albedo,
the head turning (yaw -0.3 -> 0.3 rad, steadily) and nodding, a small changing expression, grey
background, the exact 68 landmarks. The tracker runs in chunks of 3 frames; every track here (and
the CLI, which crops at the same 32 pixels) reuses one compiled chunk program.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import flame
from jface.fit import FitConfig, TrackConfig, evaluate, jitter, key_frames, landmarks_2d, track_flame
from jface.fit.flame import ndc_to_crop_pixels
from jface.models import default_flame_model
from jface.reconstruct import video

SIZE = 32
FRAMES = 6
# landmark steps are cheap (nothing rendered); 150 of them let the shape move ~3 units (Adam, lr 0.02)
CONFIG = TrackConfig(fit=FitConfig(landmark_steps=150, photometric_steps=20, render_size=SIZE), chunk=3)


@pytest.fixture(scope="module")
def model():
    return default_flame_model()


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    time = np.linspace(0.0, 1.0, FRAMES)
    pose = np.zeros((FRAMES, 6))
    pose[:, 1] = -0.3 + 0.6 * time                      # yaw
    pose[:, 0] = 0.05 * np.sin(np.pi * time)            # pitch
    pose[:, 3] = 0.05 + 0.05 * time                     # jaw
    light = np.zeros((FRAMES, 9, 3))
    light[:, 0] = 3.2
    light[:, 1:4] = 0.4 * rng.normal(size=(3, 3))
    shape = np.zeros((1, 100))
    shape[0, :10] = rng.normal(size=10)  # the components 68 landmarks and a 32-pixel photo can see
    codes = {"shape": np.repeat(shape, FRAMES, 0),
             "tex": np.repeat(rng.normal(size=(1, 50)), FRAMES, 0),
             "exp": 0.4 * np.outer(time, rng.normal(size=50)), "pose": pose,
             "cam": np.tile([9.0, 0.01, -0.01], (FRAMES, 1)), "light": light}
    return {k: np.asarray(v, np.float32) for k, v in codes.items()}


@pytest.fixture(scope="module")
def sequence(model):
    """Rendered by :func:`jface.fit.evaluate` in batches of 3 (the program the CLI's overlay uses)."""
    truth = _truth()
    frames, landmarks = [], []
    for part in (slice(0, 3), slice(3, 6)):
        codes = {k: v[part] for k, v in truth.items()}
        points = np.asarray(landmarks_2d(model, codes), np.float32)
        weighted = np.concatenate([points, np.ones((3, 68, 1), np.float32)], axis=-1)  # as the CLI's
        out = evaluate(model, codes, np.zeros((3, SIZE, SIZE, 3), np.float32), weighted, config=CONFIG.fit)
        alpha = out["alpha_images"]
        frames.append(out["rendered_images"] * alpha + 0.3 * (1.0 - alpha))
        landmarks.append(points)
    return truth, np.concatenate(frames).astype(np.float32), np.concatenate(landmarks)


@pytest.fixture(scope="module")
def tracked(model, sequence):
    _, frames, landmarks = sequence
    return track_flame(model, frames, landmarks, CONFIG)


@pytest.fixture(scope="module")
def noisy_tracks(model, sequence):
    """Landmarks with 0.03 NDC noise (3.4 px at 224), tracked with and without smoothness."""
    _, frames, landmarks = sequence
    noisy = landmarks + 0.03 * np.random.default_rng(1).normal(size=landmarks.shape).astype(np.float32)
    rough = TrackConfig(fit=CONFIG.fit, chunk=CONFIG.chunk, smooth_pose=0.0, smooth_exp=0.0, smooth_cam=0.0,
                        smooth_light=0.0)
    return track_flame(model, frames, noisy, CONFIG)[0], track_flame(model, frames, noisy, rough)[0]


@jax.jit
def _neutral_landmarks(model, shape):
    return flame.forward(model, shape, jnp.zeros(50), jnp.zeros(6))["landmarks3d"]


def _neutral(model, shape):
    """The 68 landmarks of the neutral face in 3D (world): the part of the head that 68 image
    landmarks and a face-masked photo observe (not the back of the head, ears or neck)."""
    return np.asarray(_neutral_landmarks(model, jnp.asarray(shape, jnp.float32)), np.float64)


def _aligned_error(vertices, target):
    """Mean point distance after the best scale and translation: an orthographic camera cannot
    tell a larger head from a closer one, so the overall size is the camera's."""
    v, t = vertices - vertices.mean(0), target - target.mean(0)
    scale = np.sum(v * t) / np.sum(v * v)
    return float(np.linalg.norm(scale * v - t, axis=-1).mean())


def test_shared_shape_is_recovered(model, sequence, tracked):
    truth, _, _ = sequence
    codes, history = tracked
    assert codes["shape"].shape == (FRAMES, 100) and codes["light"].shape == (FRAMES, 9, 3)
    np.testing.assert_array_equal(codes["shape"], np.repeat(codes["shape"][:1], FRAMES, 0))
    np.testing.assert_array_equal(codes["tex"], np.repeat(codes["tex"][:1], FRAMES, 0))
    target = _neutral(model, truth["shape"][0])
    fitted = _aligned_error(_neutral(model, codes["shape"][0]), target)
    mean_face = _aligned_error(_neutral(model, np.zeros(100)), target)
    # measured 0.68 of the mean face's error (3 key frames, 150 landmark + 20 photometric steps at
    # 32 pixels); the remaining components are those 68 points and a 32-pixel photo barely see
    assert fitted < 0.8 * mean_face, (fitted, mean_face)
    np.testing.assert_array_equal(history["key_frames"], key_frames(FRAMES, 3))
    assert history["tracking"]["landmark"]["loss"].shape == (2, CONFIG.fit.landmark_steps + 1, 3)


def test_pose_track_follows_the_truth(sequence, tracked):
    truth, _, landmarks = sequence
    codes, history = tracked
    yaw_error = np.abs(codes["pose"][:, 1] - truth["pose"][:, 1])
    assert yaw_error.max() < 0.06, yaw_error
    assert np.corrcoef(codes["pose"][:, 1], truth["pose"][:, 1])[0, 1] > 0.98
    # every frame's landmark loss fell during its chunk, and the photometric error of the fit is low
    lmk = history["tracking"]["landmark"]["landmark_l2"]
    assert np.all(lmk[:, -1] <= lmk[:, 0] + 1e-6)
    assert np.all(history["tracking"]["photometric"]["photometric_error"][:, -1] < 0.08)


def test_smoothness_lowers_jitter(sequence, noisy_tracks):
    truth, _, _ = sequence
    smooth, rough = noisy_tracks
    smooth_jitter = jitter(smooth["pose"][:, :3] - truth["pose"][:, :3])
    rough_jitter = jitter(rough["pose"][:, :3] - truth["pose"][:, :3])
    assert smooth_jitter < 0.7 * rough_jitter, (smooth_jitter, rough_jitter)
    # and the smoothed track is no further from the truth
    smooth_error = np.abs(smooth["pose"][:, 1] - truth["pose"][:, 1]).mean()
    rough_error = np.abs(rough["pose"][:, 1] - truth["pose"][:, 1]).mean()
    assert smooth_error < rough_error + 0.01


def test_bad_inputs_name_the_argument(model, sequence):
    _, frames, landmarks = sequence
    with pytest.raises(ValueError, match="frames"):
        track_flame(model, frames[..., :2], landmarks, CONFIG)
    with pytest.raises(ValueError, match="landmarks"):
        track_flame(model, frames, landmarks[:4], CONFIG)
    absent = np.concatenate([landmarks, np.zeros(landmarks.shape[:2] + (1,), np.float32)], axis=-1)
    with pytest.raises(ValueError, match="no face"):
        track_flame(model, frames, absent, CONFIG)
    with pytest.raises(ValueError, match="chunk"):
        TrackConfig(chunk=0)
    with pytest.raises(ValueError, match=r"init\['pose'\]"):
        track_flame(model, frames, landmarks, CONFIG, init={"pose": np.zeros((2, 6))})


def test_cli_on_a_frames_folder(tmp_path, sequence):
    """Frames as PNG files with .npy landmark side files (0-based pixels) -> per-frame FLAME
    parameters, an overlay (PNG frames when imageio-ffmpeg is absent, else an mp4) and meshes."""
    from PIL import Image

    _, frames, landmarks = sequence
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, (frame, lmk) in enumerate(zip(frames, landmarks)):
        Image.fromarray((frame * 255 + 0.5).astype(np.uint8)).save(folder / f"f{index:02d}.png")
        np.save(folder / f"f{index:02d}.npy", ndc_to_crop_pixels(lmk, SIZE) - 0.5)
    out = tmp_path / "out"
    code = video.main([str(folder), "-o", str(out), "--steps", "150", "20", "--size", str(SIZE), "--chunk", "3",
                       "--mesh-every", "2", "--no-video"])
    assert code == 0
    params = np.load(out / "flame_params.npz")
    assert params["expression"].shape == (FRAMES, 100) and params["shape"].shape == (300,)
    assert params["global_pose"].shape == (FRAMES, 3) and params["full_pose"].shape == (FRAMES, 15)
    record = json.loads((out / "flame_params.json").read_text())
    assert [frame["frame"] for frame in record["frames"]] == [f"f{i:02d}.png" for i in range(FRAMES)]
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["f00.obj", "f02.obj", "f04.obj"]
    overlays = sorted((out / "overlay").iterdir())
    assert len(overlays) == FRAMES
    assert np.asarray(Image.open(overlays[0])).shape == (SIZE, SIZE, 3)
    # the yaw still follows the truth through the crops
    truth = _truth()
    assert np.abs(params["global_pose"][:, 1] - truth["pose"][:, 1]).max() < 0.08
    # a missing input is one clear error, exit 2
    assert video.main([str(tmp_path / "missing"), "-o", str(out)]) == 2


def test_cli_on_a_video_file(tmp_path, sequence):
    """An mp4 read through imageio-ffmpeg with a ``--landmarks`` array: the same tracking as the
    frames folder, and the overlay written as an mp4 of every frame (read back here)."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg")
    _, frames, landmarks = sequence
    clip = tmp_path / "clip.mp4"
    writer = ffmpeg.write_frames(str(clip), (SIZE, SIZE), fps=10, codec="libx264", pix_fmt_out="yuv444p",
                                 output_params=["-crf", "0"], macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray((frame * 255 + 0.5).astype(np.uint8)))
    writer.close()
    read, names, fps, paths = video.read_frames(clip)
    assert len(read) == FRAMES and paths is None and fps == pytest.approx(10.0)
    assert np.abs(read[2].astype(float) - (frames[2] * 255 + 0.5).astype(np.uint8)).mean() < 2.0  # near lossless
    np.save(tmp_path / "landmarks.npy", ndc_to_crop_pixels(landmarks, SIZE) - 0.5)
    out = tmp_path / "out"
    code = video.main([str(clip), "-o", str(out), "--landmarks", str(tmp_path / "landmarks.npy"), "--steps", "150",
                       "20", "--size", str(SIZE), "--chunk", "3", "--mesh-every", "3"])
    assert code == 0
    params = np.load(out / "flame_params.npz")
    assert params["expression"].shape == (FRAMES, 100) and params["shape"].shape == (300,)
    assert np.abs(params["global_pose"][:, 1] - _truth()["pose"][:, 1]).max() < 0.08
    overlay, _, _, _ = video.read_frames(out / "overlay.mp4")
    assert len(overlay) == FRAMES and overlay[0].shape == (SIZE, SIZE, 3)
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["000000.obj", "000003.obj"]
