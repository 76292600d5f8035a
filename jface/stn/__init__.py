"""3DMM-STN (Bas et al. 2017, ``github.com/anilbas/3DMMasSTN``) as pure JAX functions.

Per-item layers (batch with ``jax.vmap``): :func:`split_theta`, :func:`project`,
:func:`sampling_grid`, :func:`visibility`, :func:`flatten` (``layer/vl_nn*.m``); losses with the
original reductions and their ``*_batch`` variants; the mirror augmentation (``dagnn_3dmmasstn.m``);
the Flax :class:`Localiser`; the network, defined once (:mod:`jface.stn.network`):
:func:`predict_theta` -> :func:`apply_theta`, together :func:`apply_network` / the jit-compiled
:func:`forward`; and ``demo.m``'s landmark fit (:mod:`jface.stn.fit`). Frames and conventions:
BUILD_NOTES.md, "Frames and conventions".
"""

from jface.stn.fit import fit_adam, fit_gd, init_theta, landmark_objective
from jface.stn.layers import (
    flatten,
    grid_faces,
    grid_hw_of,
    mask_texture,
    morphable_shape,
    project,
    rotation_matrix,
    sampling_grid,
    select_points,
    split_theta,
    visibility,
    visibility_normals,
)
from jface.stn.localiser import (
    Localiser,
    LocaliserConfig,
    convert_matconvnet,
    init_localiser,
    load_vggface_mat,
    read_vggface_mat,
)
from jface.stn.losses import (
    AFLW21_MIRROR,
    landmark_loss,
    landmark_loss_batch,
    mirror_batch,
    mirror_image,
    mirror_labels,
    prior_loss,
    prior_loss_batch,
    shape_loss,
    shape_loss_batch,
    siamese_loss,
    siamese_loss_batch,
    symmetry_loss,
    symmetry_loss_batch,
)
from jface.stn.network import (
    LOSS_TERMS,
    LOSS_WEIGHTS,
    ThetaWhitening,
    apply_network,
    apply_theta,
    forward,
    predict_theta,
    split_labels,
)

__all__ = [
    "split_theta", "morphable_shape", "rotation_matrix", "project", "select_points",
    "sampling_grid", "visibility", "visibility_normals", "mask_texture", "flatten", "grid_faces",
    "grid_hw_of",
    "landmark_loss", "prior_loss", "symmetry_loss", "siamese_loss",
    "landmark_loss_batch", "prior_loss_batch", "symmetry_loss_batch", "siamese_loss_batch",
    "shape_loss", "shape_loss_batch",
    "AFLW21_MIRROR", "mirror_labels", "mirror_image", "mirror_batch",
    "Localiser", "LocaliserConfig", "init_localiser", "load_vggface_mat",
    "read_vggface_mat", "convert_matconvnet",
    "LOSS_WEIGHTS", "LOSS_TERMS", "ThetaWhitening", "predict_theta", "apply_theta", "apply_network", "forward",
    "split_labels",
    "init_theta", "landmark_objective", "fit_gd", "fit_adam",
]
