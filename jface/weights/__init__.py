"""``python -m jface.weights convert KIND SRC -o DST``: the released torch / Caffe / MatConvNet
weights -> the project's weight ``.npz`` (:mod:`jface.files.weights`).

Nothing here imports torch or executes pickled code: the readers are those of :mod:`jface.files`
(:func:`~jface.files.torch_save.load_torch_file`, :func:`~jface.files.pickles.load_numpy_pickle`),
the network mappings those of :mod:`jface.deca.weights` and :mod:`jface.stn.localiser`.

Command line::

    python -m jface.weights convert deca deca_model.tar -o weights/deca.npz
    python -m jface.weights convert vggface2 resnet50_ft_weight.pkl -o weights/vggface2.npz
    python -m jface.weights convert vgg19 vgg19-dcbb9e9d.pth -o weights/vgg19.npz
    python -m jface.weights convert vggface-matconvnet vgg-face.mat -o weights/localiser.npz

Load the result with :func:`jface.files.weights.load_variables` and pass the subtrees to the Flax
modules of :mod:`jface.deca.networks`, e.g. ``ResNetEncoder(236).apply(w['E_flame'], images)``.
"""
