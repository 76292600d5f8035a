"""Labels for unlabelled photographs: landmark side files first, else a real face detector.

**Side files win.** Beside ``photo.jpg``, the first of ``photo.pts`` (iBUG 300-W), ``photo.txt``
(one "x y" per line), ``photo.npy`` ((68, 2+) array) or ``photo.mat`` (3DDFA layout: ``pt3d_68``
(3, 68) or ``pt2d`` (2, 68)) that exists gives the 68 iBUG points, 0-based pixels (x = column,
y = row), read by :func:`read_side_landmarks`. A broken side file skips the photo (it is never
silently replaced by a detection).

**The detector** (optional extra ``jface[detect]``: ``mediapipe==0.10.14``, Apache-2.0; its face
detector and 478-point face mesh models are inside the wheel, so it runs offline):
:class:`MediapipeDetector` returns every face of a photo as a :class:`Face`, largest first. The 68
iBUG points are mesh points by :data:`MESH478_TO_IBUG68` (each the mean of the listed mesh
vertices); the skin mask for DECA's photometric loss is the mesh's face-oval polygon
(:data:`FACE_OVAL`, :func:`face_oval_mask`). Chosen over the ``[detector]`` extra (dlib-bin +
face-recognition-models) because that 68-point model is licensed for non-commercial use only.

mediapipe 0.10.14's legacy ``solutions`` wrappers call two protobuf APIs that protobuf >= 5 removed
(``FieldDescriptor.label`` while applying calculator options, ``SymbolDatabase.GetPrototype`` while
reading landmark packets), and tensorflow-datasets needs a newer protobuf. :class:`MediapipeDetector`
therefore runs the same face-mesh graph without calculator options (the graph's built-in detection
and presence thresholds) and parses the landmark packets itself (tested with protobuf 7).

**The mapping** :data:`MESH478_TO_IBUG68` (0-based mesh vertex ids per iBUG point, image-left
first as in iBUG): jaw 0-16 along the mesh's face oval from the temple at eye height to the chin
and back; brows 17-26 the upper brow contour; nose bridge 27-30 (nasion ... 4 above the tip);
nose base 31-35 (alar base 64 / 294, subnasale 2, the points midway 60 / 290); eyes 36-47 the lid
contours with the corners 33 / 133 and 362 / 263; mouth 48-59 the outer lip contour (corners
61 / 291), 60-67 the inner contour (corners 78 / 308). Mirror pairs of iBUG map to mirror pairs
of the symmetric mesh (a test detects a photo and its mirror). Checked on the six human-labelled
photographs of 3DMM-STN's demo data: the 21 AFLW points derived from these 68
(:func:`aflw21_from_ibug68`) lie at a mean 0.056 of the outer-eye-corner distance from the human
labels (0.04 to 0.10 per photo), ears excluded (``tests/test_data_detect.py`` checks it).

**AFLW-21 from iBUG-68** (:func:`aflw21_from_ibug68`): the table
:data:`jface.models.landmarks.AFLW21_FROM_IBUG68` (mean of the listed points, vis the minimum);
the ears (AFLW points 13 and 17) have no iBUG counterpart and are marked missing (0, 0, vis 0),
as AFLW marks an occluded point, instead of the contour stand-ins the generated data uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from pathlib import Path

import numpy as np

from jface.data.real import ImageReadError, read_landmarks
from jface.errors import ModelFileError
from jface.files.mat import load_mat
from jface.models.landmarks import AFLW21_EARS, AFLW21_FROM_IBUG68

__all__ = [
    "MESH478_TO_IBUG68",
    "FACE_OVAL",
    "SIDE_SUFFIXES",
    "Face",
    "MediapipeDetector",
    "DlibDetector",
    "DETECTORS",
    "make_detector",
    "find_faces",
    "DetectorMissingError",
    "side_file",
    "read_side_landmarks",
    "mesh_to_ibug68",
    "aflw21_from_ibug68",
    "polygon_mask",
    "face_oval_mask",
    "landmark_mask",
]

# iBUG-68 point k = mean of these 0-based vertices of mediapipe's 478-point face mesh.
MESH478_TO_IBUG68 = (
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),   # 0-8 jaw to chin
    (400,), (379,), (365,), (397, 288), (288, 361), (323,), (454,), (356,),        # 9-16 chin to jaw
    (70,), (63,), (105,), (66,), (107,),                                            # 17-21 image-left brow
    (336,), (296,), (334,), (293,), (300,),                                         # 22-26 image-right brow
    (168,), (6,), (195,), (4,),                                                     # 27-30 nose bridge
    (64,), (60,), (2,), (290,), (294,),                                             # 31-35 nose base
    (33,), (160,), (158,), (133,), (153,), (144,),                                  # 36-41 image-left eye
    (362,), (385,), (387,), (263,), (373,), (380,),                                 # 42-47 image-right eye
    (61,), (40,), (37,), (0,), (267,), (270,), (291,), (321,), (314,), (17,), (84,), (91,),  # 48-59
    (78,), (81,), (13,), (311,), (308,), (402,), (14,), (178,),                     # 60-67 inner lips
)
# The face oval of the mesh (mediapipe's FACEMESH_FACE_OVAL edges chained into a polygon),
# starting at the top of the forehead and going towards image right.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

SIDE_SUFFIXES = (".pts", ".txt", ".npy", ".mat")
EXTRA = "pip install 'jface[detect]'  (mediapipe==0.10.14)"
DLIB_EXTRA = "pip install 'jface[detector]'  (dlib-bin + face-recognition-models; the 68-point model is for " \
             "non-commercial use only)"


class DetectorMissingError(ImportError):
    """The optional detector is not installed; the message names the extra to install."""


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face. ``mesh (478, 3)``: x, y in 0-based pixels (x = column, y = row), z in
    pixels relative to the mesh centre (smaller = closer), or None for a detector without a mesh
    (dlib); ``landmarks68 (68, 2)`` pixels."""

    mesh: np.ndarray | None
    landmarks68: np.ndarray

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the mesh (else of the 68 points) in pixels."""
        points = self.landmarks68 if self.mesh is None else self.mesh
        left, top = np.asarray(points)[:, :2].min(0)
        right, bottom = np.asarray(points)[:, :2].max(0)
        return float(left), float(top), float(right), float(bottom)

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


def _shifted(face: Face, dx: float, dy: float) -> Face:
    offset = np.asarray([dx, dy])
    mesh = None if face.mesh is None else np.concatenate([face.mesh[:, :2] + offset, face.mesh[:, 2:]], axis=1)
    return Face(mesh=mesh, landmarks68=np.asarray(face.landmarks68)[:, :2] + offset)


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def find_faces(detector, image, *, grid: int = 3, overlap: float = 0.3, min_window: int = 256) -> list[Face]:
    """Every face of a photograph, the small faces of a large group photo too: ``detector`` (a
    callable ``image -> [Face]``, e.g. :class:`MediapipeDetector`) on the whole image, then on a
    ``grid`` x ``grid`` of overlapping windows, each 1.5 / ``grid`` of the longer side (mediapipe's
    detector sees a downscaled image, so a face of a tenth of a 1280-px photo is found only in a
    window). A face seen more than once (boxes overlapping by IoU > ``overlap``) is kept from the
    window where it is farthest from an edge the window cuts through the photo, so no window edge
    cuts it. Largest first. ``grid`` <= 1, or windows under ``min_window`` px (a small photo, which
    the detector already sees at about its own resolution), is the detector alone."""
    image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    windows = [(0, 0, width, height)]
    size = int(np.ceil(1.5 * max(height, width) / max(grid, 1)))
    if grid > 1 and min_window <= size < max(height, width):
        win_w, win_h = min(size, width), min(size, height)
        for top in np.linspace(0, height - win_h, grid).round().astype(int):
            for left in np.linspace(0, width - win_w, grid).round().astype(int):
                windows.append((int(left), int(top), int(left) + win_w, int(top) + win_h))
    seen = []
    for left, top, right, bottom in dict.fromkeys(windows):
        for face in detector(image[top:bottom, left:right]):
            face = _shifted(face, left, top) if (left or top) else face
            box = face.box
            # distance to the window's edges inside the photo (a photo's own border cuts nothing)
            margins = [box[0] - left if left > 0 else np.inf, box[1] - top if top > 0 else np.inf,
                       right - box[2] if right < width else np.inf, bottom - box[3] if bottom < height else np.inf]
            seen.append((min(margins), face))
    kept = []
    for _, face in sorted(seen, key=lambda item: (-item[0], -item[1].area)):
        if all(_iou(face.box, other.box) <= overlap for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda face: -face.area)


def mesh_to_ibug68(mesh) -> np.ndarray:
    """``(478 or 468, 2+)`` mesh points -> ``(68, 2)`` iBUG points by :data:`MESH478_TO_IBUG68`."""
    mesh = np.asarray(mesh, np.float64)
    if mesh.ndim != 2 or mesh.shape[0] < 468 or mesh.shape[1] < 2:
        raise ValueError(f"mesh: expected (468 or 478, 2+) face-mesh points, got shape {mesh.shape}")
    return np.stack([mesh[list(group), :2].mean(0) for group in MESH478_TO_IBUG68])


def aflw21_from_ibug68(landmarks68) -> np.ndarray:
    """``(..., 68, 3)`` (x, y, vis) -> ``(..., 21, 3)`` AFLW-21 in the same frame, ears missing.

    Each point is the mean of its :data:`AFLW21_FROM_IBUG68` points, vis their minimum; a point
    that is not visible, and the ears (:data:`AFLW21_EARS`), are (0, 0, 0), AFLW's missing label.
    """
    lm = np.asarray(landmarks68, np.float64)
    if lm.shape[-2:] != (68, 3):
        raise ValueError(f"landmarks68: expected (..., 68, 3) (x, y, vis), got shape {lm.shape}")
    xy = np.stack([lm[..., list(idx), :2].mean(-2) for idx in AFLW21_FROM_IBUG68], -2)
    vis = np.stack([lm[..., list(idx), 2].min(-1) for idx in AFLW21_FROM_IBUG68], -1)
    vis[..., list(AFLW21_EARS)] = 0.0
    vis = (vis > 0).astype(np.float64)
    return np.concatenate([xy * vis[..., None], vis[..., None]], -1)


# --- side files ----------------------------------------------------------------------------------

def side_file(image_path) -> Path | None:
    """The landmark side file of ``image_path`` (first of :data:`SIDE_SUFFIXES`), or None."""
    image_path = Path(image_path)
    for suffix in SIDE_SUFFIXES:
        candidate = image_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_side_landmarks(path) -> np.ndarray:
    """68 iBUG points ``(68, 2)`` float64, 0-based pixels, from a side file; raises
    :class:`jface.data.real.ImageReadError` naming the file and what was expected."""
    path = Path(path)
    if path.suffix != ".mat":
        return read_landmarks(path, 68)
    try:
        mat = load_mat(path)
    except ModelFileError as exc:
        raise ImageReadError(str(exc)) from exc
    for key in ("pt3d_68", "pt2d"):
        if key in mat:
            points = np.asarray(mat[key], np.float64)
            if points.ndim != 2 or points.shape[1] != 68 or points.shape[0] < 2:
                raise ImageReadError(f"{path}: '{key}' expected shape (2 or 3, 68), got {points.shape}")
            points = points[:2].T
            if not np.all(np.isfinite(points)):
                raise ImageReadError(f"{path}: '{key}' contains NaN or Inf")
            return points
    names = sorted(k for k in mat if not k.startswith("__"))
    raise ImageReadError(
        f"{path}: no 68-point landmarks (expected 'pt3d_68' or 'pt2d' as in 3DDFA's .mat; has {names})")


# --- masks -----------------------------------------------------------------------------------------

def polygon_mask(points, image_hw) -> np.ndarray:
    """``(P, 2)`` polygon in 0-based pixels (x, y) -> ``(H, W)`` uint8 0/1 (filled, Pillow)."""
    from PIL import Image, ImageDraw

    height, width = int(image_hw[0]), int(image_hw[1])
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in np.asarray(points)[:, :2]], fill=1)
    return np.asarray(canvas, np.uint8)


def face_oval_mask(face: Face, image_hw) -> np.ndarray:
    """The face-oval polygon of ``face``'s mesh as an ``(H, W)`` uint8 0/1 skin mask."""
    return polygon_mask(face.mesh[list(FACE_OVAL), :2], image_hw)


def landmark_mask(landmarks68, image_hw, forehead: float = 0.2) -> np.ndarray:
    """A skin mask from 68 points alone (photos labelled by side files): the jaw line 0-16 and
    the brows 26-17 raised by ``forehead`` x the chin-to-nasion distance along chin -> nasion."""
    lm = np.asarray(landmarks68, np.float64)[:, :2]
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68: expected (68, 2+) pixels, got shape {np.shape(landmarks68)}")
    up = lm[27] - lm[8]
    brows = lm[26:16:-1] + forehead * up
    return polygon_mask(np.concatenate([lm[0:17], brows]), image_hw)


# --- the detector ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _native_stderr_silenced():
    """mediapipe's native code writes start-up noise straight to file descriptor 2 (TFLite and absl
    logs; with protobuf >= 5 a caught AttributeError while importing). Python exceptions still
    propagate; only what native code prints in the meantime is dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def _face_mesh_class():
    try:
        with _native_stderr_silenced():
            from mediapipe.framework.formats import landmark_pb2
            from mediapipe.python import solution_base
            from mediapipe.python._framework_bindings import _packet_getter
            from mediapipe.python.solutions import face_mesh
    except ImportError as exc:
        raise DetectorMissingError(f"the face detector needs the optional extra: {EXTRA} ({exc})") from exc

    class FaceMeshGraph(solution_base.SolutionBase):
        """mediapipe's FaceMesh graph, static images, refined (478 points); see the module docstring."""

        def __init__(self, max_faces: int):
            super().__init__(binary_graph_path=face_mesh._BINARYPB_FILE_PATH,
                             side_inputs={"num_faces": max_faces, "with_attention": True,
                                          "use_prev_landmarks": False},
                             outputs=["multi_face_landmarks"])

        def _get_packet_content(self, packet_data_type, output_packet):
            if output_packet.is_empty():
                return None
            if packet_data_type == solution_base.PacketDataType.PROTO_LIST:
                return [landmark_pb2.NormalizedLandmarkList.FromString(blob)
                        for blob in _packet_getter._get_serialized_proto_list(output_packet)]
            return super()._get_packet_content(packet_data_type, output_packet)

    return FaceMeshGraph


class MediapipeDetector:
    """Faces of a photograph by mediapipe's face mesh: ``detector(image) -> [Face]``, largest first.

    ``image``: ``(H, W, 3)`` uint8 RGB. ``max_faces``: the most faces looked for per photo. Raises
    :class:`DetectorMissingError` (naming the extra) when mediapipe is not installed.
    """

    name = "mediapipe-0.10.14-face-mesh"

    def __init__(self, max_faces: int = 8):
        if max_faces < 1:
            raise ValueError(f"max_faces: expected >= 1, got {max_faces}")
        with _native_stderr_silenced():
            self._graph = _face_mesh_class()(int(max_faces))
            # The graph loads its models on background threads; one blank image waits for them.
            self._graph.process(input_data={"image": np.zeros((64, 64, 3), np.uint8)})

    def __call__(self, image) -> list[Face]:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        result = self._graph.process(input_data={"image": image})
        height, width = image.shape[:2]
        faces = []
        for landmarks in result.multi_face_landmarks or []:
            # Normalised mesh coordinates count from the image's edge: pixel centre = x W - 0.5.
            mesh = np.array([[p.x * width - 0.5, p.y * height - 0.5, p.z * width] for p in landmarks.landmark])
            faces.append(Face(mesh=mesh, landmarks68=mesh_to_ibug68(mesh)))
        return sorted(faces, key=lambda face: -face.area)

    def close(self) -> None:
        self._graph.close()


class DlibDetector:
    """Faces of a photograph by dlib's HOG face detector and the 68-point shape predictor of
    face-recognition-models (the ``[detector]`` extra; that model was trained on iBUG 300-W and is
    for non-commercial use only): ``detector(image) -> [Face]`` (``mesh`` None, so the skin mask is
    :func:`landmark_mask`), largest first. ``upsample``: dlib's upsampling passes (finds smaller
    faces, slower). Raises :class:`DetectorMissingError` naming the extra when it is not installed.
    """

    name = "dlib-hog-shape-predictor-68"

    def __init__(self, upsample: int = 1, predictor_path=None):
        try:
            import dlib  # type: ignore
            if predictor_path is None:
                import face_recognition_models  # type: ignore

                predictor_path = face_recognition_models.pose_predictor_model_location()
        except ImportError as exc:
            raise DetectorMissingError(f"the dlib detector needs the optional extra: {DLIB_EXTRA} ({exc})") from exc
        self._upsample = int(upsample)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))

    def __call__(self, image) -> list[Face]:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        faces = []
        for rect in self._detector(image, self._upsample):
            shape = self._predictor(image, rect)
            # dlib counts pixels from 0 at pixel centres, as jface does
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
            faces.append(Face(mesh=None, landmarks68=points))
        return sorted(faces, key=lambda face: -face.area)

    def close(self) -> None:
        pass


# The detectors by the name ``--detector`` takes.
DETECTORS = {"mediapipe": MediapipeDetector, "dlib": DlibDetector}


def make_detector(name: str):
    """The detector called ``name`` (:data:`DETECTORS`); raises ValueError for another name and
    :class:`DetectorMissingError` (naming the extra) when it is not installed."""
    if name not in DETECTORS:
        raise ValueError(f"detector: expected one of {sorted(DETECTORS)} (or none), got {name!r}")
    return DETECTORS[name]()
