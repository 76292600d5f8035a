"""FLAME as DECA uses it (``decalib/models/FLAME.py``, ``decalib/models/lbs.py``): linear blend
skinning and the 68 landmarks.

Public entry point: :func:`forward` (per item; batch with ``jax.vmap``). Frames: FLAME world
(metres; x to the subject's left, y up, +z towards the camera). :mod:`jface.flame.heads` holds the
procedural and demo head meshes; :mod:`jface.flame.testing` tiny random models for tests.
"""

from jface.flame.layer import (
    barycentric_landmarks,
    contour_row_from_yaw,
    dynamic_contour_row,
    dynamic_landmark_embedding,
    forward,
    full_pose,
    landmark_visibility,
)
from jface.flame.lbs import blend_shapes, lbs, pose_feature, pose_offsets, rigid_transforms, skin

__all__ = [
    "forward",
    "full_pose",
    "barycentric_landmarks",
    "dynamic_contour_row",
    "contour_row_from_yaw",
    "dynamic_landmark_embedding",
    "landmark_visibility",
    "lbs",
    "blend_shapes",
    "pose_feature",
    "pose_offsets",
    "rigid_transforms",
    "skin",
]
