"""DECA's ``encode`` and ``decode`` (``DECA.encode`` / ``DECA.decode`` in ``decalib/deca.py``), batched
and jit-compatible.

``params`` is DECA's checkpoint layout, as :func:`jface.weights` converts ``deca_model.tar``:
``{'E_flame': variables, 'E_detail': variables, 'D_detail': variables}`` (Flax variables of
:class:`ResNetEncoder(236)`, :class:`ResNetEncoder(128)`, :class:`DetailGenerator`; entries may be
missing: no detail code / no displacement then).

Frames (channel-last images ``(B, H, W, C)``): FLAME world for ``verts``, ``normals``,
``landmarks3d_world``; DECA NDC (x right, y down, smaller z closer: ``batch_orth_proj`` and the y/z
flip; BUILD_NOTES.md, Frames and conventions) for ``trans_verts``, ``landmarks2d``,
``landmarks3d``; UV maps ``(B, 256, 256, C)`` with row 0 = v = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jface import flame
from jface.deca import appearance
from jface.deca import detail as detail_lib
from jface.deca import networks as nets
from jface.deca.render import render
from jface.geometry import vertex_normals
from jface.models.morphable import uv_face_eye_mask
from jface.render import interpolate, rasterize, uv_ndc
from jface.sampling import grid_sample

__all__ = ["encode", "decode", "decode_geometry", "decode_geometry_batch", "detail_outputs", "detail_uv_maps",
           "extract_texture"]


def encode(params, images, *, train: bool = False):
    """E_coarse (and E_detail) on ``images (B, 224, 224, 3)`` RGB in [0, 1], no normalisation.

    Returns DECA's code dict: ``shape (B,100)``, ``tex (B,50)``, ``exp (B,50)``, ``pose (B,6)`` =
    [global aa, jaw aa], ``cam (B,3)`` = (s, t_x, t_y), ``light (B,9,3)``, and ``detail (B,128)``
    when ``params`` has ``'E_detail'``. ``train=False`` uses BatchNorm running statistics (DECA's
    inference); ``train=True`` returns ``(codes, new_batch_stats)`` with batch statistics.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (224, 224, 3):
        raise ValueError(
            f"images: expected (B, 224, 224, 3) RGB in [0, 1] (DECA's encoder needs 224×224), got {images.shape}"
        )
    if "E_flame" not in params:
        raise ValueError("params: expected an 'E_flame' entry (the coarse encoder's variables)")
    updates = {}

    def run(module, name):
        if train:
            out, mutated = module.apply(params[name], images, train=True, mutable=["batch_stats"])
            updates[name] = mutated["batch_stats"]
            return out
        return module.apply(params[name], images, train=False)

    codes = dict(nets.split_codes(run(nets.ResNetEncoder(236), "E_flame")))
    if "E_detail" in params:
        codes["detail"] = run(nets.ResNetEncoder(128), "E_detail")
    return (codes, updates) if train else codes


def _check_codes(codes):
    for name in ("shape", "exp", "pose", "cam"):
        if name not in codes:
            raise ValueError(f"codes: missing {name!r} (expected DECA's code dict from encode)")
    batch = jnp.shape(codes["shape"])[0]
    for name, value in codes.items():
        if jnp.ndim(value) < 1 or jnp.shape(value)[0] != batch:
            raise ValueError(f"codes[{name!r}]: expected a leading batch axis {batch}, got shape {jnp.shape(value)}")
    if jnp.shape(codes["pose"])[-1] != 6:
        raise ValueError(f"codes['pose']: expected (B, 6) = [global aa, jaw aa], got {jnp.shape(codes['pose'])}")
    if jnp.shape(codes["cam"])[-1] != 3:
        raise ValueError(f"codes['cam']: expected (B, 3) = (s, t_x, t_y), got {jnp.shape(codes['cam'])}")
    return batch


def _light(codes):
    light = jnp.asarray(codes["light"])
    if light.shape[1:] == (27,):
        light = light.reshape(light.shape[0], 9, 3)
    if light.shape[1:] != (9, 3):
        raise ValueError(f"codes['light']: expected (B, 9, 3) or (B, 27), got {light.shape}")
    return light


def decode_geometry(model, shape, expression, pose, cam) -> dict:
    """FLAME + camera for one item: the geometry part of ``DECA.decode`` (``FLAME.forward``, then
    ``batch_orth_proj`` and the y/z flip).

    Returns ``verts (V,3)``, ``trans_verts (V,3)`` (DECA NDC), ``landmarks2d (68,2)`` (NDC),
    ``landmarks3d (68,4)`` = [NDC x, y, z, visibility], ``landmarks3d_world (68,3)``,
    ``normals (V,3)`` (world vertex normals), ``transformed_normals (V,3)``.
    """
    out = flame.forward(model, shape, expression, pose)
    verts = out["vertices"]
    trans_verts = appearance.project(verts, cam)
    normals = vertex_normals(verts, model.faces)
    transformed_normals = vertex_normals(trans_verts, model.faces)
    result = {"verts": verts, "trans_verts": trans_verts, "normals": normals,
              "transformed_normals": transformed_normals}
    if "landmarks2d" in out:
        vis = flame.landmark_visibility(model, transformed_normals)
        result["landmarks2d"] = appearance.project(out["landmarks2d"], cam)[:, :2]
        result["landmarks3d"] = jnp.concatenate(
            [appearance.project(out["landmarks3d"], cam), vis[:, None]], axis=-1
        )
        result["landmarks3d_world"] = out["landmarks3d"]
    return result


def decode_geometry_batch(model, codes) -> dict:
    """:func:`decode_geometry` over the leading axis of DECA's code dict (``shape``, ``exp``,
    ``pose``, ``cam``); the model is shared."""
    return jax.vmap(decode_geometry, in_axes=(None, 0, 0, 0, 0))(
        model, codes["shape"], codes["exp"], codes["pose"], codes["cam"])


def decode(
    params,
    model,
    codes,
    *,
    image_hw=(224, 224),
    rendering=True,
    use_detail=True,
    shade_render=True,
    fixed_displacement=None,
    train: bool = False,
    detail_generator=None,
    uv_layout=None,
):
    """``DECA.decode``, batched over the codes' leading axis.

    Args:
      params: network variables (module docstring); only ``'D_detail'`` is used here.
      model: :class:`jface.models.FlameModel` with landmark embedding, UV layout and (optionally)
        albedo model and ``uv_face_eye_mask`` (ones when absent).
      codes: DECA's code dict (:func:`encode`), batched.
      image_hw: rendered image size (static).
      rendering: rasterize and render (needs the model's UV layout).
      use_detail: run F_d and the detail normals when ``params`` has ``'D_detail'`` and ``codes``
        has ``'detail'``.
      shade_render: render with the SH light (the paper / training release). DECA's HEAD decode
        renders unshaded albedo (a bug since its commit 11c4d44); ``False`` reproduces that.
      fixed_displacement: Δ ``(256, 256)`` (DECA's ``fixed_displacement_256.npy``) or None (zeros).
      train: F_d with batch statistics (returns ``(outputs, new_batch_stats)``).
      detail_generator: the F_d module (default ``DetailGenerator()``, DECA's 256² decoder; its
        output size must match the model's ``uv_face_eye_mask``).
      uv_layout: the UV layout's fragments (:func:`jface.render.layout_fragments`, computed outside
        ``jit``) when ``model`` is a traced argument of the caller's program, so that the detail
        maps do not compile a second rasterizer; rasterized here when None or of another size than
        the displacement map.

    Returns a dict (keys present when computed): ``verts``, ``trans_verts``, ``landmarks2d
    (B,68,2)``, ``landmarks3d (B,68,4)``, ``landmarks3d_world``, ``normals (B,V,3)``,
    ``transformed_normals``; with rendering: ``grid (B,H,W,2)``, ``rendered_images (B,H,W,3)``,
    ``alpha_images (B,H,W,1)``, ``normal_images``, ``albedo_images``, ``shading_images``,
    ``mask_face_eye (B,H,W,1)`` (the UV face/eye mask carried into the image with the detached
    grid), ``albedo (B,256,256,3)``; with detail: ``displacement (B,256,256,1)`` (raw D),
    ``uv_detail_normals (B,256,256,3)``, ``uv_shading``, ``uv_texture``, ``displacement_map``
    (D + Δ, no mask).
    """
    batch = _check_codes(codes)
    light = _light(codes) if "light" in codes else None
    need_uv = rendering or (use_detail and "D_detail" in params and "detail" in codes)
    if need_uv and (model.uv_coords is None or model.uv_faces is None):
        raise ValueError("model: rendering and detail need the FLAME UV layout (uv_coords, uv_faces)")
    out = decode_geometry_batch(model, codes)
    updates = {}
    dtype = out["verts"].dtype
    uv_mask = uv_face_eye_mask(model, dtype, size=256)
    if "tex" in codes and model.albedo_mean is not None:
        # truncate: a model with fewer albedo components than the code ignores the extra ones
        albedo = jax.vmap(lambda t: appearance.albedo(model, t, truncate=True))(codes["tex"]).astype(dtype)
    else:
        albedo = jnp.zeros((batch,) + uv_mask.shape + (3,), dtype)
    if rendering:
        lights = light if (shade_render and light is not None) else None

        def render_item(verts, trans_verts, alb, lit):
            ops = render(
                verts, trans_verts, model.faces, model.uv_coords, model.uv_faces, alb, lit, image_hw=image_hw
            )
            mask_face_eye = grid_sample(uv_mask[..., None], jax.lax.stop_gradient(ops["grid"]))
            ops["mask_face_eye"] = mask_face_eye
            return ops

        ops = jax.vmap(render_item, in_axes=(0, 0, 0, None if lights is None else 0))(
            out["verts"], out["trans_verts"], albedo, lights
        )
        out.update(
            grid=ops["grid"],
            rendered_images=ops["images"],
            alpha_images=ops["alpha_images"],
            normal_images=ops["normal_images"],
            albedo_images=ops["albedo_images"],
            mask_face_eye=ops["mask_face_eye"],
            fragments=ops["fragments"],
        )
        if "shading_images" in ops:
            out["shading_images"] = ops["shading_images"]
    out["albedo"] = albedo
    if use_detail and "D_detail" in params and "detail" in codes:
        z = nets.detail_latent(codes["pose"][:, 3:], codes["exp"], codes["detail"])
        generator = nets.DetailGenerator() if detail_generator is None else detail_generator
        if train:
            disp, mutated = generator.apply(params["D_detail"], z, train=True, mutable=["batch_stats"])
            updates["D_detail"] = mutated["batch_stats"]
        else:
            disp = generator.apply(params["D_detail"], z, train=False)
        out.update(detail_outputs(model, out["verts"], out["normals"], disp, light, albedo, uv_mask,
                                  fixed_displacement, uv_layout=uv_layout))
    return (out, updates) if train else out


def detail_outputs(model, verts, normals, displacement, light, albedo, uv_mask=None,
                   fixed_displacement=None, *, uv_layout=None) -> dict:
    """The detail half of ``DECA.decode``, batched: ``displacement (B, 256, 256, 1)`` D.

    Returns ``displacement``, ``uv_detail_normals``, ``uv_shading``, ``uv_texture`` (albedo ⊙
    uv_shading), ``displacement_map`` (D + Δ), ``uv_positions`` and ``uv_normals`` (coarse,
    world2uv of the vertices and normals). ``uv_layout``: as in :func:`decode`.
    """
    displacement = jnp.asarray(displacement)
    size = displacement.shape[1:3]
    dtype = verts.dtype
    if uv_mask is None:
        uv_mask = uv_face_eye_mask(model, dtype, size=size)

    # world2uv (``SRenderY.world2uv``) rasterizes the UV layout, which does not depend on the item: do it
    # once and interpolate both attributes of every item with the same fragments.
    if uv_layout is not None and tuple(jnp.shape(uv_layout.face_index)) == tuple(size):
        fragments = uv_layout
    else:
        fragments = rasterize(uv_ndc(model.uv_coords).astype(dtype), model.uv_faces, size)
    faces = jnp.asarray(model.faces, jnp.int32)

    def item(v, n, d):
        uv_pos = interpolate(fragments, v[faces])
        uv_nrm = interpolate(fragments, n[faces])
        nd = detail_lib.displacement_to_normals(d, uv_pos, uv_nrm, uv_mask, fixed_displacement)
        return nd, uv_pos, uv_nrm

    uv_detail_normals, uv_pos, uv_nrm = jax.vmap(item)(verts, normals, displacement)
    result = {
        "displacement": displacement,
        "uv_detail_normals": uv_detail_normals,
        "uv_positions": uv_pos,
        "uv_normals": uv_nrm,
        "displacement_map": detail_lib.displacement_map(displacement, fixed_displacement),
    }
    if light is not None:
        uv_shading = jax.vmap(appearance.shade)(uv_detail_normals, light)
        result["uv_shading"] = uv_shading
        result["uv_texture"] = albedo * uv_shading
    return result


def _uv_inputs(model, trans_verts, images, caller: str, channels: str):
    """Checked ``(trans_verts, images, dtype)`` of the functions that sample images into UV space."""
    trans_verts = jnp.asarray(trans_verts)
    images = jnp.asarray(images)
    if model.uv_coords is None or model.uv_faces is None:
        raise ValueError(f"model: {caller} needs the FLAME UV layout (uv_coords, uv_faces)")
    if images.ndim != 4 or images.shape[0] != trans_verts.shape[0]:
        raise ValueError(f"images: expected (B, H, W, {channels}) with B = {trans_verts.shape[0]}, got {images.shape}")
    return trans_verts, images, jnp.result_type(trans_verts.dtype, images.dtype)


def detail_uv_maps(model, trans_verts, images, seg_masks=None, uv_size=256, *, occlusion_threshold=-0.05,
                   transformed_normals=None, mask_threshold=None):
    """The detail stage's UV targets (``Trainer.training_step`` in ``decalib/trainer.py``), batched
    and detached.

    ``trans_verts (B, V, 3)`` (DECA NDC), ``images (B, H, W, 3)``, ``seg_masks (B, H, W[, 1])`` or
    None (ones). With P' = world2uv(trans_verts): ``uv_texture_gt`` and ``uv_mask_gt`` =
    grid_sample([I, M_seg], P'[..., :2]) (align_corners=False); the self-occlusion mask
    world2uv(normals of trans_verts).z < −0.05; ``uv_vis_mask`` = uv_mask_gt ⊙ self-occlusion ⊙
    uv_face_eye_mask. Returns ``uv_texture_gt (B,S,S,3)``, ``uv_mask_gt``, ``uv_vis_mask``
    ``(B,S,S,1)``. ``transformed_normals (B, V, 3)``: the vertex normals of ``trans_verts`` when
    the caller has them (not recomputed); ``mask_threshold``: binarise uv_mask_gt (> threshold)
    inside ``uv_vis_mask``.
    """
    trans_verts, images, dtype = _uv_inputs(model, trans_verts, images, "detail_uv_maps", "3")
    if seg_masks is None:
        seg_masks = jnp.ones(images.shape[:3] + (1,), dtype)
    seg_masks = jnp.asarray(seg_masks, dtype)
    if seg_masks.ndim == 3:
        seg_masks = seg_masks[..., None]
    size = (uv_size, uv_size) if isinstance(uv_size, int) else tuple(uv_size)
    uv_mask = uv_face_eye_mask(model, dtype, size=size)
    fragments = rasterize(uv_ndc(model.uv_coords).astype(dtype), model.uv_faces, size)
    faces = jnp.asarray(model.faces, jnp.int32)

    if transformed_normals is None:
        transformed_normals = jax.vmap(vertex_normals, (0, None))(trans_verts, faces)

    def item(tv, tn, image, seg):
        uv_pverts = interpolate(fragments, tv[faces])
        sampled = grid_sample(jnp.concatenate([image.astype(dtype), seg], axis=-1), uv_pverts[..., :2])
        uv_pnorm = interpolate(fragments, tn[faces])
        occlusion = (uv_pnorm[..., 2:3] < occlusion_threshold).astype(dtype)
        mask_gt = sampled[..., 3:4]
        seen = mask_gt if mask_threshold is None else (mask_gt > mask_threshold).astype(dtype)
        return sampled[..., :3], mask_gt, seen * occlusion * uv_mask[..., None]

    tex, mask_gt, vis = jax.vmap(item)(trans_verts, jnp.asarray(transformed_normals), images, seg_masks)
    stop = jax.lax.stop_gradient
    return {"uv_texture_gt": stop(tex), "uv_mask_gt": stop(mask_gt), "uv_vis_mask": stop(vis)}


def extract_texture(model, trans_verts, images, fill=None, uv_size=256):
    """DECA's ``uv_texture_gt`` (``DECA.decode``), batched.

    The input image sampled at every texel's projected position, grid_sample(I,
    world2uv(trans_verts)[..., :2]) (no visibility test), inside the UV face/eye mask M; outside it
    ``fill (B, S, S, 3)`` (DECA with ``useTex``: its ``uv_texture``) or flat grey 0.7 when None:
    uv_gt ⊙ M + fill ⊙ (1 − M). Returns ``(B, S, S, 3)``.
    """
    trans_verts, images, dtype = _uv_inputs(model, trans_verts, images, "extract_texture", "C")
    size = (uv_size, uv_size) if isinstance(uv_size, int) else tuple(uv_size)
    mask = uv_face_eye_mask(model, dtype, size=size)[..., None]
    fragments = rasterize(uv_ndc(model.uv_coords).astype(dtype), model.uv_faces, size)
    faces = jnp.asarray(model.faces, jnp.int32)

    def item(tv, image):
        uv_pverts = interpolate(fragments, tv[faces])
        return grid_sample(image.astype(dtype), uv_pverts[..., :2])

    uv_gt = jax.vmap(item)(trans_verts, images)
    fill = jnp.full_like(uv_gt, 0.7) if fill is None else jnp.asarray(fill, dtype)
    return uv_gt * mask + fill * (1.0 - mask)
