"""jface.data.detect: side files, the AFLW-21 mapping, masks, and the mediapipe detector on real
photographs (scikit-image's astronaut; 3DMM-STN's demo photos with their human AFLW labels, read
from ../shared/realdata and only ever written under tmp_path)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from jface.data import detect
from jface.data.detect import (
    FACE_OVAL,
    MESH478_TO_IBUG68,
    DetectorMissingError,
    Face,
    MediapipeDetector,
    aflw21_from_ibug68,
    find_faces,
    landmark_mask,
    mesh_to_ibug68,
    polygon_mask,
    read_side_landmarks,
    side_file,
)
from jface.data.real import ImageReadError
from jface.models.landmarks import AFLW21_FROM_IBUG68, IBUG68_MIRROR

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe (the [detect] extra) is not installed")


def test_mapping_tables():
    assert len(MESH478_TO_IBUG68) == 68
    assert all(0 <= i < 468 for group in MESH478_TO_IBUG68 for i in group)  # no iris points needed
    assert len(FACE_OVAL) == len(set(FACE_OVAL)) == 36
    mesh = np.zeros((478, 2))
    mesh[:, 0] = np.arange(478)
    points = mesh_to_ibug68(mesh)
    assert points[3, 0] == (132 + 58) / 2 and points[36, 0] == 33
    with pytest.raises(ValueError, match="468 or 478"):
        mesh_to_ibug68(np.zeros((68, 2)))


def test_aflw21_from_ibug68_marks_ears_and_hidden_points_missing():
    rng = np.random.default_rng(0)
    lm = np.concatenate([rng.uniform(10, 100, (68, 2)), np.ones((68, 1))], 1)
    lm[37, 2] = 0  # an upper eyelid point hidden: the eye centre (AFLW 8) is missing
    out = aflw21_from_ibug68(lm)
    assert out.shape == (21, 3)
    np.testing.assert_allclose(out[0, :2], lm[17, :2])
    np.testing.assert_allclose(out[18, :2], lm[[62, 66], :2].mean(0))  # mouth centre
    assert list(np.flatnonzero(out[:, 2] == 0)) == [7, 12, 16]
    assert np.all(out[[7, 12, 16]] == 0)
    assert len(AFLW21_FROM_IBUG68) == 21
    with pytest.raises(ValueError, match=r"\(\.\.\., 68, 3\)"):
        aflw21_from_ibug68(np.zeros((21, 3)))


def test_side_files(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 50, (68, 2))
    image = tmp_path / "a.jpg"
    assert side_file(image) is None
    np.save(tmp_path / "a.npy", points)
    body = "\n".join(f"{x} {y}" for x, y in points)
    (tmp_path / "a.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    assert side_file(image).suffix == ".pts"  # .pts is looked for first
    np.testing.assert_allclose(read_side_landmarks(tmp_path / "a.pts"), points)
    np.testing.assert_allclose(read_side_landmarks(tmp_path / "a.npy"), points)
    import scipy.io

    scipy.io.savemat(tmp_path / "b.mat", {"pt3d_68": np.concatenate([points.T, np.zeros((1, 68))])})
    np.testing.assert_allclose(read_side_landmarks(tmp_path / "b.mat"), points)
    scipy.io.savemat(tmp_path / "c.mat", {"something": np.zeros(3)})
    with pytest.raises(ImageReadError, match=r"c.mat: no 68-point landmarks .*'something'"):
        read_side_landmarks(tmp_path / "c.mat")
    (tmp_path / "d.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(ImageReadError, match="d.mat"):
        read_side_landmarks(tmp_path / "d.mat")
    np.save(tmp_path / "e.npy", points[:21])
    with pytest.raises(ImageReadError, match="expected 68 landmarks, got 21"):
        read_side_landmarks(tmp_path / "e.npy")


def test_masks():
    square = polygon_mask(np.array([[2, 2], [7, 2], [7, 7], [2, 7]]), (10, 12))
    assert square.shape == (10, 12) and square.dtype == np.uint8
    assert square[2:8, 2:8].all() and square.sum() == 36
    rng = np.random.default_rng(2)
    jaw = np.stack([np.linspace(10, 50, 17), 30 + 20 * np.sin(np.linspace(0, np.pi, 17))], 1)
    lm = rng.uniform(20, 40, (68, 2))
    lm[:17], lm[8], lm[27] = jaw, [30, 50], [30, 20]
    lm[17:27] = np.stack([np.linspace(15, 45, 10), np.full(10, 22)], 1)
    mask = landmark_mask(lm, (64, 64))
    assert mask[35, 30] == 1 and mask[2, 30] == 0 and mask[60, 30] == 0
    assert mask[16, 30] == 1  # the forehead above the brows (raised by 0.2 x chin-to-nasion = 6 px)


def test_missing_mediapipe_names_the_extra(monkeypatch):
    detect._face_mesh_class.cache_clear()
    # the package and every submodule an earlier test of this worker imported (those are cached in
    # sys.modules and would import even with the package blocked)
    for name in [n for n in sys.modules if n == "mediapipe" or n.startswith("mediapipe.")] + ["mediapipe"]:
        monkeypatch.setitem(sys.modules, name, None)
    try:
        with pytest.raises(DetectorMissingError, match=r"pip install 'jface\[detect\]'"):
            MediapipeDetector()
    finally:
        detect._face_mesh_class.cache_clear()


# --- the real detector ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector():
    if not HAS_MEDIAPIPE:
        pytest.skip("mediapipe (the [detect] extra) is not installed")
    found = MediapipeDetector()
    yield found
    found.close()


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


@needs_mediapipe
def test_face_oval_is_mediapipes():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    edges = {tuple(e) for e in FACEMESH_FACE_OVAL}
    ring = set(zip(FACE_OVAL, FACE_OVAL[1:] + FACE_OVAL[:1]))
    assert ring == edges


@needs_mediapipe
def test_astronaut(detector, astronaut):
    faces = detector(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.mesh.shape == (478, 3) and face.landmarks68.shape == (68, 2)
    lm = face.landmarks68
    left, top, right, bottom = face.box
    assert 150 < left < right < 300 and 50 < top < bottom < 260  # her face in the 512 x 512 photo
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eyes left to right in the image
    assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]  # brow, eye, nose, lips, chin
    mask = detect.face_oval_mask(face, astronaut.shape[:2])
    inside = mask[np.round(lm[:, 1]).astype(int), np.round(lm[:, 0]).astype(int)]
    assert inside[17:].all()  # every inner point on the skin mask
    assert 0.02 < mask.mean() < 0.2


@needs_mediapipe
def test_mapping_follows_left_and_right(detector, astronaut):
    """Detecting the mirrored photo gives the mirrored 68 points (iBUG's mirror pairs)."""
    points = detector(astronaut)[0].landmarks68
    mirrored = detector(np.ascontiguousarray(astronaut[:, ::-1]))[0].landmarks68
    expected = points[IBUG68_MIRROR].copy()
    expected[:, 0] = astronaut.shape[1] - 1 - expected[:, 0]
    eye_distance = np.linalg.norm(points[36] - points[45])
    error = np.linalg.norm(mirrored - expected, axis=1) / eye_distance
    assert error.mean() < 0.05 and error.max() < 0.15


def _square_detector(calls):
    """A stand-in detector: every white square of the image is a face (its corners as points)."""
    def detect(image):
        calls.append(image.shape)
        white = np.all(image == 255, axis=-1)
        faces = []
        for rows in np.split(np.arange(image.shape[0]), np.flatnonzero(np.diff(white.any(1))) + 1):
            cols = np.flatnonzero(white[rows].any(0)) if white[rows].any() else []
            if len(cols):  # one square per band of rows is enough for this test
                top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
                points = np.array([[left, top], [right, top], [left, bottom], [right, bottom]] * 17, float)
                faces.append(Face(mesh=None, landmarks68=points))
        return faces
    return detect


def test_find_faces_merges_windows_and_keeps_uncut_faces():
    image = np.zeros((300, 600, 3), np.uint8)
    image[40:80, 20:60] = 255  # near the photo's corner: a photo's own border cuts nothing
    image[200:240, 280:320] = 255  # in the middle: seen whole by the photo and by several windows
    calls = []
    faces = find_faces(_square_detector(calls), image, grid=3)
    # the photo, then 3 x 3 windows of 300 px: the 3 rows coincide (the photo is 300 high), so 3
    assert calls == [(300, 600, 3)] + [(300, 300, 3)] * 3
    boxes = sorted(tuple(round(v) for v in face.box) for face in faces)
    assert boxes == [(20, 40, 59, 79), (280, 200, 319, 239)]  # each face once, in photo pixels
    # a window edge through a face gives a cut (smaller) face: the whole one is kept instead
    image[:] = 0
    image[100:160, 140:200] = 255  # the windows start at x = 0, 150, 300: x = 150 cuts it
    faces = find_faces(_square_detector([]), image, grid=3)
    assert [tuple(round(v) for v in f.box) for f in faces] == [(140, 100, 199, 159)]
    assert len(find_faces(_square_detector(calls := []), image, grid=1)) == 1 and len(calls) == 1


@needs_mediapipe
def test_find_faces_finds_the_small_faces_of_a_group_photo(detector, astronaut):
    """Three copies of the astronaut (her face ~105 px) on a 1280 x 880 canvas: mediapipe on the
    whole photo finds none (it sees a downscaled image); find_faces finds each once, with the points
    the detector gives on that copy alone."""
    from PIL import Image

    size = 400
    copy = np.asarray(Image.fromarray(astronaut[0:350, 60:410]).resize((size, size), Image.BILINEAR))
    alone = detector(copy)[0].landmarks68
    canvas = np.full((880, 1280, 3), 90, np.uint8)
    corners = [(0, 0), (880 - size, 420), (0, 1280 - size)]
    for top, left in corners:
        canvas[top:top + size, left:left + size] = copy
    assert detector(canvas) == []
    found = find_faces(detector, canvas)
    assert len(found) == len(corners)
    eye = np.linalg.norm(alone[36] - alone[45])
    for top, left in corners:
        expected = alone + [left, top]
        errors = [np.linalg.norm(f.landmarks68 - expected, axis=1).mean() / eye for f in found]
        assert min(errors) < 0.05  # this copy's face, where the detector puts it on the copy alone


@needs_mediapipe
def test_no_face_and_bad_images(detector):
    assert detector(np.zeros((64, 64, 3), np.uint8)) == []
    assert detector(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector(np.zeros((8, 8), np.uint8))


@pytest.fixture(scope="module")
def demodata(realdata):
    scipy_io = pytest.importorskip("scipy.io")
    data = scipy_io.loadmat(realdata / "3dmmasstn" / "demodata.mat")
    images = [np.ascontiguousarray(data["Images"][..., i]).astype(np.uint8) for i in range(data["Images"].shape[-1])]
    labels = [data["Labels"][0, :, :, i].T for i in range(data["Labels"].shape[-1])]  # (21, 2) y-up, 1-based
    return images, labels


@pytest.mark.realdata
@needs_mediapipe
def test_aflw21_of_detections_match_human_labels(detector, demodata):
    """The 21 AFLW points from the mapped 68 against the human labels of 3DMM-STN's demo photos."""
    images, labels = demodata
    errors = []
    for image, label in zip(images, labels):
        faces = detector(image)
        assert faces, "no face found in a demo photo"
        ours = aflw21_from_ibug68(np.concatenate([faces[0].landmarks68, np.ones((68, 1))], 1))
        human = np.stack([label[:, 0] - 1, 224 - label[:, 1]], 1)  # 0-based pixels
        known = (label[:, 0] != 0) & (ours[:, 2] > 0)  # labelled, and not an ear
        eye_distance = np.linalg.norm(human[6] - human[11])
        errors.append(np.linalg.norm(ours[known, :2] - human[known], axis=1).mean() / eye_distance)
    errors = np.array(errors)
    assert errors.mean() < 0.08 and errors.max() < 0.15, errors


@pytest.mark.realdata
@needs_mediapipe
def test_photo_folder_of_real_faces_for_both_tasks(tmp_path, demodata, astronaut):
    """Identity folders of real photos (built in tmp_path only), labelled by the detector."""
    from PIL import Image

    from jface.data.pipeline import StreamLoader
    from jface.data.sources import open_source

    images, _ = demodata
    folder = tmp_path / "photos"
    for i, image in enumerate(images):
        (folder / f"person{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"person{i % 3}" / f"demo{i}.png")
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(folder / "person0" / "blank.png")
    quiet = dict(data_dir=tmp_path / "tfds", progress=False, log=lambda *_: None)
    deca = open_source(str(folder), task="deca", image_size=112, **quiet)
    assert len(deca) == 7 and list(deca.identities()) == [0, 0, 1, 1, 2, 2, 3]
    report = (deca.directory / "jface_build_report.json").read_text()
    assert '"detected": 7' in report and "blank.png" in report and "no face found" in report
    record = deca[6]  # the astronaut, DECA's test crop
    assert record["images"].shape == (112, 112, 3) and record["face_mask"].mean() > 0.2
    ndc = record["landmarks68"]
    assert np.all(np.abs(ndc[:, :2]) < 0.95) and ndc[36, 0] < ndc[45, 0]
    stn = open_source(str(folder), task="stn", **quiet)
    labels = stn[6]["labels"]
    assert labels.shape == (21, 3) and labels[:, 2].sum() == 19  # ears missing
    assert labels[20, 1] < labels[14, 1] < labels[7, 1]  # y-up: chin below nose below eye
    loader = StreamLoader(stn, batch_size=4, images_per_group=2, mirror=True, keys=("images", "labels", "identity"))
    batch = next(loader)
    assert batch["images"].shape == (8, 224, 224, 3) and list(batch["mirrored"][:2]) == [False, True]
