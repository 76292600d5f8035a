"""Landmark tables, defined once: the 21-point AFLW and 68-point iBUG/300-W layouts, their mirror
permutations, the AFLW-from-iBUG mapping, the outer eye corners, and the landmark vertices of
jface's synthetic default 3DMM-STN model.

All indices are 0-based. "Left"/"right" in point names are **image** left/right of a frontal face
(the AFLW and iBUG annotation convention): image left is the subject's right, i.e. the model's
-x side (BFM axes: x to the subject's left).

Mirror permutations: for a horizontally flipped image, landmark k of the flipped image is landmark
``MIRROR[k]`` of the original (``new[k] = old[MIRROR[k]]``; every permutation here is an
involution). The AFLW one is the 3DMM-STN's ``lookup`` (``refineData`` in ``dagnn_3dmmasstn.m``)
minus 1.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "AFLW21_NAMES",
    "AFLW21_MIRROR",
    "AFLW21_FROM_IBUG68",
    "AFLW21_EARS",
    "AFLW21_OUTER_EYE_CORNERS",
    "IBUG68_MIRROR",
    "IBUG68_OUTER_EYE_CORNERS",
    "IBUG68_GROUPS",
    "IBUG68_CONTOUR",
    "IBUG68_STATIC",
    "DEFAULT_STN_AFLW21",
    "DEFAULT_STN_IBUG68",
    "mirror_permutation",
]

# The order of the original's Landmarks21_112.anl (the landmark loss, objective1 of
# dagnn_3dmmasstn_init.m): 1-6 brows, 7-12 eye corners and centres, 13 left ear, 14 nose left,
# 15 nose tip, 16 nose right, 17 right ear, 18-20 mouth, 21 chin (1-based).
AFLW21_NAMES = (
    "brow_left_outer", "brow_left_centre", "brow_left_inner",
    "brow_right_inner", "brow_right_centre", "brow_right_outer",
    "eye_left_outer", "eye_left_centre", "eye_left_inner",
    "eye_right_inner", "eye_right_centre", "eye_right_outer",
    "ear_left", "nose_left", "nose_tip", "nose_right", "ear_right",
    "mouth_left", "mouth_centre", "mouth_right", "chin",
)

# refineData's lookup = [6 5 4 3 2 1 12 11 10 9 8 7 17 16 15 14 13 20 19 18 21] (1-based,
# dagnn_3dmmasstn.m), 0-based here: mirrored landmark k takes old landmark AFLW21_MIRROR[k].
AFLW21_MIRROR = np.array(
    [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 16, 15, 14, 13, 12, 19, 18, 17, 20], dtype=np.int32
)
# Outer eye corners (the NME normaliser): AFLW 7 and 12, iBUG 36 and 45 (0-based).
AFLW21_OUTER_EYE_CORNERS = (6, 11)
IBUG68_OUTER_EYE_CORNERS = (36, 45)

# Each AFLW-21 point as the mean of these 0-based iBUG-68 points. The ears (AFLW 13 and 17,
# AFLW21_EARS) have no iBUG counterpart: the contour points at ear level (1 and 15) stand in for
# them where a label is needed (generated DECA data); a fit to iBUG points leaves them out.
AFLW21_FROM_IBUG68 = (
    (17,), (19,), (21,),          # 1-3  image-left brow: outer end, centre, inner end
    (22,), (24,), (26,),          # 4-6  image-right brow: inner end, centre, outer end
    (36,), (37, 38, 40, 41), (39,),  # 7-9 image-left eye: outer corner, centre, inner corner
    (42,), (43, 44, 46, 47), (45,),  # 10-12 image-right eye: inner corner, centre, outer corner
    (1,),                         # 13 image-left ear: the contour point at ear level
    (31,), (30,), (35,),          # 14-16 nose left, nose tip, nose right
    (15,),                        # 17 image-right ear
    (48,), (62, 66), (54,),       # 18-20 mouth left corner, mouth centre (inner lips), right corner
    (8,),                         # 21 chin
)
AFLW21_EARS = (12, 16)


def _ibug_mirror():
    m = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                # brows
    pairs += [(31, 35), (32, 34)]                                # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips
    pairs += [(60, 64), (61, 63), (67, 65)]                      # inner lips
    for a, b in pairs:
        m[a], m[b] = b, a
    return m.astype(np.int32)


IBUG68_MIRROR = _ibug_mirror()

IBUG68_GROUPS = {
    "jaw": tuple(range(0, 17)),
    "brow_left": tuple(range(17, 22)),
    "brow_right": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),
    "nose_base": tuple(range(31, 36)),
    "eye_left": tuple(range(36, 42)),
    "eye_right": tuple(range(42, 48)),
    "lips_outer": tuple(range(48, 60)),
    "lips_inner": tuple(range(60, 68)),
}
# DECA's split (decalib/models/FLAME.py, FLAME.forward): 17 dynamic contour points then 51 static ones
IBUG68_CONTOUR = np.arange(0, 17, dtype=np.int32)
IBUG68_STATIC = np.arange(17, 68, dtype=np.int32)

# Landmark vertices of ``jface.models.default_stn_model()`` on its 112 x 112 grid (vertex k is
# texel (k // 112, k % 112)). They are recomputed at generation time; a test checks that the
# generator reproduces these constants. Mirror pairs are exact grid mirrors (column c <-> 111 - c);
# centre-line points use column 55, as the BFM's Landmarks21_112.anl does.
DEFAULT_STN_AFLW21 = np.array(
    [3058, 2955, 3185, 3198, 2980, 3101, 3844, 3962, 3967, 3984, 3989, 3883, 5608, 6099, 5767,
     6108, 5703, 7439, 7559, 7456, 9351],
    dtype=np.int32,
)
DEFAULT_STN_IBUG68 = np.array(
    [4282, 5177, 6073, 7084, 7980, 8766, 9222, 9455, 9575, 9472, 9257, 8817, 8035, 7139, 6134,
     5238, 4341, 3170, 2950, 2954, 3070, 3185, 3198, 3089, 2981, 2985, 3213, 4423, 4983, 5431,
     5767, 6212, 6326, 6439, 6329, 6219, 3844, 3736, 3740, 3967, 4188, 4072, 3984, 3763, 3767,
     3883, 4103, 4211, 7439, 7331, 7222, 7223, 7225, 7340, 7456, 7900, 8009, 8007, 8006, 7891,
     7440, 7445, 7559, 7450, 7455, 7674, 7671, 7669],
    dtype=np.int32,
)


def mirror_permutation(layout: str) -> np.ndarray:
    """The mirror permutation of ``"aflw21"`` or ``"ibug68"`` (``new[k] = old[perm[k]]``)."""
    if layout == "aflw21":
        return AFLW21_MIRROR
    if layout == "ibug68":
        return IBUG68_MIRROR
    raise ValueError(f"layout: expected 'aflw21' or 'ibug68', got {layout!r}")
