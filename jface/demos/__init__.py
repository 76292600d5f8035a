"""Offline demos on real photographs (nothing is downloaded): ``python -m jface.demos.<name>``.

* :mod:`jface.demos.astronaut`: 3DMM-STN landmark fit and flattening of scikit-image's
  ``astronaut.png``.
* :mod:`jface.demos.real_photos`: trained runs' landmark NME on real photographs beside the mean-pose baseline.
* :mod:`jface.demos.silhouette_fit`: a silhouette term (rasterize -> interpolate -> antialias)
  moves a mesh to a target silhouette.
"""
